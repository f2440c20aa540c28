"""Step time of chunked vs dense token-level distillation, interleaved in one process (issue 18's time target).

`benchmarks/lm_memory.py` runs every mode in its own fresh process (memory needs that) one after
the other, so its step times move with whatever else the machine does between the runs. This
script measures the time ratio instead: the same Llama-shaped teacher and student as
`lm_memory.py` (`build_causal_lm`: hidden 576, teacher 4 layers, student 2, untied embeddings,
random seeded weights, batch 1; the same flags change them), two distillers on the same models (`chunk_size=None` and
`"auto"` or `--chunk-size N`), each warmed up by one step, then `--rounds` rounds of one
`train_on_batch` of each, alternating. Reported: the median step time of each and the ratio of the
medians (chunked / dense), in `benchmarks/results/lm_step_time_<backend>.json`.

    KERAS_BACKEND=torch python benchmarks/lm_step_time.py --vocabulary 128256 --positions 2048
"""

import argparse
import json
import os
import statistics
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabulary", type=int, default=128256)
    parser.add_argument("--positions", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, help="positions per chunk (default: 'auto')")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    for flag, default in (("hidden-dim", 576), ("intermediate-dim", 1536), ("query-heads", 9), ("kv-heads", 3)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "lm_step_time_{backend}.json"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras
    import keras_hub
    import lm_memory
    import numpy as np

    import keras_kd

    warnings.filterwarnings("ignore", message=r".* predicts \d+ of the first batch's", category=UserWarning)
    keras.utils.set_random_seed(args.seed)
    teacher = lm_memory.build_causal_lm(keras_hub, args, args.vocabulary, args.teacher_layers, "teacher")
    student = lm_memory.build_causal_lm(keras_hub, args, args.vocabulary, args.student_layers, "student")
    x, y = lm_memory.make_batch(np, args.vocabulary, args.positions, args.seed)
    distillers = {
        mode: lm_memory.make_distiller(keras, keras_kd, teacher, student, mode, args.chunk_size)
        for mode in ("dense", "chunked")
    }
    for distiller in distillers.values():
        distiller.train_on_batch(x, y)
    seconds = {mode: [] for mode in distillers}
    for _ in range(args.rounds):
        for mode, distiller in distillers.items():
            seconds[mode].append(lm_memory.timed_step(distiller, x, y)[0])
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    backend = keras.backend.backend()
    record = {
        "backend": backend,
        "vocabulary": args.vocabulary,
        "positions": args.positions,
        "chunk_size": "auto" if args.chunk_size is None else args.chunk_size,
        "chunk_positions": lm_memory.chunk_positions(
            "chunked", args.chunk_size, args.vocabulary, args.positions, distillers["chunked"]
        ),
        "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": medians,
        "chunked_over_dense": medians["chunked"] / medians["dense"],
        "machine": lm_memory.machine_info(),
        "versions": lm_memory.versions(backend),
    }
    out = args.out.format(backend=backend)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(
        f"[{backend}] {args.vocabulary} x {args.positions}: dense {medians['dense']:.2f} s, chunked "
        f"{medians['chunked']:.2f} s ({record['chunk_positions']} positions per chunk): "
        f"{record['chunked_over_dense']:.3f} x; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
