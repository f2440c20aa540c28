"""Does the `keras-kd demo` regime hold over seeds? Teacher, scratch student, distilled student.

Runs `keras_kd.demo.cli.run_demo` (the demo itself, default settings) once per seed; each seed draws
the teacher's and the student's initial weights, the batches and the 5,000 labelled images of the
students. Prints, per model, the mean, std and min/max of the accuracy on the 10,000 test images,
and the gain of the distilled student over the scratch student (per seed: same initial weights,
same images, same batches). Verdict: PASS when the mean gain exceeds twice the seed spread, the
largest std among the scratch accuracy, the distilled accuracy and the per-seed gain.

Usage (about 2.5 minutes per seed with TensorFlow on 2 CPU cores):

    KERAS_BACKEND=tensorflow python benchmarks/mnist_quality.py            # seeds 0 1 2
    python benchmarks/mnist_quality.py --backend jax --seeds 0 1 2 3 4 --json quality.json
"""

import argparse
import json
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="set before keras is imported")
    parser.add_argument("--data-dir", help="TensorFlow Datasets data directory holding a prepared mnist")
    parser.add_argument("--json", help="also write the per-seed reports and the summary here")
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend

    import keras
    import numpy as np

    from keras_kd.demo.cli import run_demo

    reports = []
    for seed in args.seeds:
        keras.backend.clear_session()
        report = run_demo(seed=seed, data_dir=args.data_dir, verbose=0)
        reports.append(report)
        row = "  ".join(
            f"{name} {100 * m['test_accuracy']:.2f} % ({m['seconds']:.0f} s)" for name, m in report["models"].items()
        )
        print(f"seed {seed}: {row}  total {report['total_seconds']:.0f} s", flush=True)

    acc = {name: np.array([r["models"][name]["test_accuracy"] for r in reports]) for name in reports[0]["models"]}
    gain = acc["student_distilled"] - acc["student_scratch"]
    first = reports[0]
    print(
        f"\nbackend {first['backend']}, data {first['data_source']}, {len(reports)} seeds {args.seeds}, "
        f"settings {first['settings']}"
    )
    print(f"{'test accuracy (%)':<26}{'mean':>8}{'std':>8}{'min':>8}{'max':>8}")
    for name, values in [*acc.items(), ("gain (distilled-scratch)", gain)]:
        v = 100 * values
        print(f"{name:<26}{v.mean():>8.2f}{v.std():>8.2f}{v.min():>8.2f}{v.max():>8.2f}")
    spread = max(acc["student_scratch"].std(), acc["student_distilled"].std(), gain.std())
    passed = bool(gain.mean() > 2 * spread)
    print(f"mean gain {100 * gain.mean():.2f} points vs 2 x spread {200 * spread:.2f}: {'PASS' if passed else 'FAIL'}")
    if args.json:
        summary = {
            name: {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
            for name, v in [*acc.items(), ("gain", gain)]
        }
        with open(args.json, "w") as file:
            json.dump(
                {"reports": reports, "summary": summary, "spread": float(spread), "passed": passed}, file, indent=2
            )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
