#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend; fails if any backend fails or collects no test.
# Two pytest-xdist workers by default (KERAS_KD_TEST_WORKERS=N to change; whole files per worker).
# Extra arguments go to pytest, e.g. `bash scripts/test_all_backends.sh -x -k distiller`.
set -u
cd "$(dirname "$0")/.."
status=0
summary=""
for backend in ${KERAS_KD_BACKENDS:-tensorflow jax torch}; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -p no:cacheprovider -n "${KERAS_KD_TEST_WORKERS:-2}" --dist loadfile "$@"
  rc=$?
  case $rc in
    0) summary+="$backend: passed"$'\n' ;;
    5) summary+="$backend: FAILED (pytest collected no test)"$'\n'; status=1 ;;
    *) summary+="$backend: FAILED (pytest exit $rc)"$'\n'; status=1 ;;
  esac
done
printf '\n%s' "$summary"
exit $status
