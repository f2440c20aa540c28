"""What a layer pair adds to a distillation step, against the pair loss's own cost and Keras core.

Per backend, with the models, data and timing protocol of `step_overhead.py` (fixed threads, compile
time excluded, samples of `--steps` steps inside one `fit`, rounds in random order, medians of
per-round ratios with bootstrap 95 % intervals, a control), it times:

    C0    keras_kd.Distiller fit, logits only
    C0'   a second copy of C0: the control
    CP_k  the same distiller plus one pair of kind k
    L_k   the pair term alone, forward and backward (gradients w.r.t. the student features and the
          regressor's weights), on the features of one batch, compiled as the backend's step is
    KF    keras.distillation.Distiller with LogitsDistillation + FeatureDistillation("mse") on the
          pair `same` (Keras core has no regressors, so the layers have equal shapes)

Pairs: `hint` Hint("t_dense" 128 wide, "s_dense" 32 wide: a Dense regressor), `same`
Hint("t_logits", "s_logits"), `attention` AttentionTransfer("t_conv1", "s_conv") (13x13 maps, 32 and
8 channels), `relational` Relational("t_dense", "s_dense") with both terms (the angle term is
O(batch^3)).

`--copies N` puts N copies of the pair in CP_k (and N terms in L_k), so that the cost of a cheap
term stands N times further above the round-to-round noise; the ratio means the same.

Targets: (CP_k - C0) / L_k <= 1.10 for every pair (a pair costs its loss plus at most 10 %), and
CP_same / KF < 1.00. A control C0'/C0 off 1 by more than 2 % makes the verdicts INCONCLUSIVE.

    python benchmarks/pair_overhead.py --backend jax
    python benchmarks/pair_overhead.py              # all backends, one subprocess each
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_overhead as so  # noqa: E402

PAIRS = ("hint", "same", "attention", "relational")
CONTROL_TOLERANCE = so.CONTROL_TOLERANCE
DEFAULT_OUT = os.path.join("benchmarks", "results", "pair_overhead_{backend}.json")


def make_pair(keras_kd, kind):
    if kind == "hint":
        return keras_kd.Hint("t_dense", "s_dense")
    if kind == "same":
        return keras_kd.Hint("t_logits", "s_logits")
    if kind == "attention":
        return keras_kd.AttentionTransfer("t_conv1", "s_conv")
    return keras_kd.Relational("t_dense", "s_dense")


def make_fit_items(keras, keras_kd, teacher, student_weights, x, y, batch_size, copies=1, kinds=PAIRS):
    def student_copy():
        student = so.build_student(keras)
        student.set_weights(student_weights)
        return student

    def distiller(pairs):
        model = keras_kd.Distiller(teacher, student_copy(), temperature=4.0, alpha=0.1, pairs=pairs)
        return model.compile(keras.optimizers.Adam(1e-3))

    models = {"C0": distiller([]), "C0b": distiller([])}
    for kind in kinds:
        models[f"CP_{kind}"] = distiller([make_pair(keras_kd, kind) for _ in range(copies)])
    core = keras.distillation.Distiller(
        teacher=teacher,
        student=student_copy(),
        distillation_losses=[
            keras.distillation.LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence()),
            keras.distillation.FeatureDistillation("mse", "t_logits", "s_logits"),
        ],
        student_loss_weight=0.1,
    )
    core.compile(keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    models["KF"] = core

    return {name: (model, so.make_fitter(model, x, y, batch_size)) for name, model in models.items()}


def make_loss_step(backend, keras, pairs, teacher_features, student_features):
    """A compiled function computing the pairs' terms (summed) and their gradients; returns a zero-arg callable.

    Every pair reads the same layers, so all of them take the features of the first one.
    """
    variables = [v for pair in pairs for regressor in pair.regressors() for v in regressor.trainable_variables]

    def total(teacher, student):
        return sum(pair.compute(teacher, [student]) for pair in pairs)

    if backend == "jax":
        import jax

        def term(student, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return total(teacher_features, student)

        step = jax.jit(jax.value_and_grad(term, argnums=(0, 1)))
        student = student_features[0]

        def run():
            # Read the values at each call: fit donates the variables' buffers.
            jax.block_until_ready(step(student, [v.value for v in variables]))

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        student = tf.constant(student_features[0])

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(student)
                value = total(teacher_features, student)
            return value, tape.gradient(value, [student] + [v.value for v in variables])

        return lambda: step()

    student = student_features[0].detach().clone().requires_grad_(True)
    teacher_detached = [t.detach() for t in teacher_features]

    def run():
        value = total(teacher_detached, student)
        value.backward()
        student.grad = None
        for v in variables:
            v.value.grad = None

    return run


def time_loss(run, steps):
    for _ in range(3):
        run()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return {"ms_per_step": 1000.0 * (time.perf_counter() - start) / steps}


def summarize(np, rounds, args):
    ms = {name: np.asarray([r["samples"][name]["ms_per_step"] for r in rounds]) for name in rounds[0]["samples"]}
    series = {f"(CP-C0)/L {kind}": (ms[f"CP_{kind}"] - ms["C0"]) / ms[f"L_{kind}"] for kind in args.pairs}
    if args.copies == 1 and "same" in args.pairs:  # Keras core's distiller has one feature term
        series["CP_same/KF"] = ms["CP_same"] / ms["KF"]
    series["C0'/C0"] = ms["C0b"] / ms["C0"]
    ratios = {}
    for name, values in series.items():
        median, low, high = so.bootstrap_median(np, values, args.bootstrap, np.random.default_rng(args.seed))
        ratios[name] = {"median": median, "ci95": [low, high], "per_round": values.tolist()}
    control_ok = abs(ratios["C0'/C0"]["median"] - 1.0) <= CONTROL_TOLERANCE
    below = args.rounds < so.PROTOCOL_MIN_ROUNDS or args.steps < so.PROTOCOL_MIN_STEPS
    verdicts = {}
    for name, ratio in ratios.items():
        if name == "C0'/C0":
            continue
        target, strict = (1.10, False) if name.startswith("(CP") else (1.00, True)
        low, high = ratio["ci95"]
        met = ratio["median"] < target if strict else ratio["median"] <= target
        if below:
            verdict = "INCONCLUSIVE (below protocol)"
        elif not control_ok:
            verdict = "INCONCLUSIVE (control off)"
        else:
            verdict = so.interval_verdict(met, low, high, target)
        verdicts[name] = {"target": target, "verdict": verdict}
    items = {name: {"median_ms": float(np.median(v))} for name, v in ms.items()}
    return {"items": items, "ratios": ratios, "verdicts": verdicts, "control_ok": control_ok}


def run_backend(args):
    backend = args.backend
    os.environ["KERAS_BACKEND"] = backend
    thread_info = so.pin_threads(args.threads)
    thread_info.update(so.fix_malloc())
    wall_start = time.perf_counter()
    thread_info.update(so.configure_framework_threads(backend, args.threads))

    import keras
    import numpy as np

    import keras_kd

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    n = (args.skip_steps + args.steps + 1) * args.batch_size
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=(n,)).astype("int32")
    teacher = so.build_teacher(keras)
    student_weights = so.build_student(keras).get_weights()
    fit_items = make_fit_items(
        keras, keras_kd, teacher, student_weights, x, y, args.batch_size, args.copies, args.pairs
    )

    batch = keras.ops.convert_to_tensor(x[: args.batch_size])
    loss_items = {}
    for kind in args.pairs:
        distiller = fit_items[f"CP_{kind}"][0]
        _, (teacher_features, *_) = distiller._teacher_forward(batch)
        _, (student_features, *_) = distiller._student_forward(batch, training=True)
        if backend == "torch":
            student_features = [s.detach() for s in student_features]
        run = make_loss_step(backend, keras, distiller.pairs, teacher_features, student_features)
        loss_items[f"L_{kind}"] = run

    window_cls = so.make_window_class(keras, so.make_sync(backend))
    for _, run in fit_items.values():
        run(args.skip_steps + 2, [])
    for _ in range(args.warmup_rounds):
        for _, run in fit_items.values():
            so.sample(window_cls, run, args.steps, args.skip_steps)
        for run in loss_items.values():
            time_loss(run, args.steps)

    names = list(fit_items) + list(loss_items)
    order_rng = np.random.default_rng(args.seed + 1)
    rounds = []
    for index in range(args.rounds):
        order = [names[i] for i in order_rng.permutation(len(names))]
        samples = {}
        for name in order:
            if name in fit_items:
                samples[name] = so.sample(window_cls, fit_items[name][1], args.steps, args.skip_steps)
            else:
                samples[name] = time_loss(loss_items[name], args.steps)
        rounds.append({"round": index, "order": order, "samples": samples})
        text = "  ".join(f"{name}={samples[name]['ms_per_step']:.2f}" for name in names)
        print(f"[{backend}] round {index + 1:2d}/{args.rounds}: {text}", flush=True)

    summary = summarize(np, rounds, args)
    lines = [f"== {backend} ({args.rounds} rounds x {args.steps} steps, batch {args.batch_size}) =="]
    for name, item in summary["items"].items():
        lines.append(f"{name:14s} {item['median_ms']:9.3f} ms/step")
    for name, ratio in summary["ratios"].items():
        verdict = summary["verdicts"].get(name)
        tail = f"target {verdict['target']:.2f}  {verdict['verdict']}" if verdict else "control"
        low, high = ratio["ci95"]
        lines.append(f"{name:24s} {ratio['median']:7.3f} [{low:7.3f}, {high:7.3f}]  {tail}")
    print("\n".join(lines), flush=True)
    result = {
        "benchmark": "pair_overhead",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            k: getattr(args, k)
            for k in ("backend", "rounds", "steps", "skip_steps", "batch_size", "threads", "copies", "pairs")
        },
        "environment": {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "framework": so._framework_version(backend),
            "threading": thread_info,
            "wall_s": time.perf_counter() - wall_start,
        },
        "rounds": rounds,
        "summary": summary,
    }
    out = args.out.format(backend=backend)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"[{backend}] wrote {out}", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    copies_parser = argparse.ArgumentParser(add_help=False)
    copies_parser.add_argument("--copies", type=int, default=1)
    copies_parser.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    known, rest = copies_parser.parse_known_args(argv)
    args = so.parse_args(rest)
    args.copies, args.pairs = known.copies, tuple(known.pairs)
    if args.copies < 1:
        sys.exit("--copies must be at least 1")
    if args.out == so.DEFAULT_OUT:
        args.out = DEFAULT_OUT
    if args.backend == "all":
        return _run_all(argv)
    run_backend(args)
    return 0


def _run_all(argv):
    import subprocess

    code = 0
    for backend in so.BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        code |= subprocess.call([sys.executable, os.path.abspath(__file__), "--backend", backend, *argv], env=env)
    return code


if __name__ == "__main__":
    sys.exit(main())
