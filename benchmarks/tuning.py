"""Tuning benchmark: default schedules vs MetaSchedule-tuned, per kernel and end to end.

    # MiniLM batch 8, seq 128, sparsity 0.75, 32x32 blocks: tune, then time the whole model
    python benchmarks/tuning.py minilm --trials 32 --max-trials 1000 \
        --json benchmarks/results/tuning_minilm.json
    # the linear cases of benchmarks/kernel_speed.py (32x32 blocks, sparsity 0.75), 64 then 256
    python benchmarks/tuning.py kernels --trials 64 256 \
        --json benchmarks/results/tuning_kernels.json

Each trial budget continues the previous one's work directory (a tuning run resumes), so the
256-trial row is the 64-trial run plus 192 more trials per kernel.  Kernel latencies are the
ones :func:`tetris_tvm.tune` measured when it judged each task (default vs the fastest
correct record, interleaved medians); end-to-end latencies are timed here, interleaved, median
of repeats: torch eager (dense), ours with default schedules, ours tuned.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import zoo  # noqa: E402
from tetris_tvm.bench import random_block_mask, time_interleaved  # noqa: E402
from tetris_tvm.compiler import resolve_target  # noqa: E402
from tetris_tvm.kernels import BSRMatrix  # noqa: E402
from tetris_tvm.kernels import compute as K  # noqa: E402
from tetris_tvm.tuning import KernelTask, tune, tune_tasks  # noqa: E402

LINEAR_SHAPES = [(768, 3072), (3072, 768), (4096, 4096)]  # (in, out), as benchmarks/kernel_speed.py
LINEAR_M = [1, 16, 128]


def _task_rows(result) -> list[dict]:
    return [
        {"task": t.name, "kind": t.kind, "calls": t.weight, "trials": t.trials,
         "default_us": t.default_us, "tuned_us": t.tuned_us, "verdict": t.verdict,
         "rejected": t.rejected,
         "speedup": (t.default_us / t.best_us) if t.default_us and t.best_us else None}
        for t in result.tasks
    ]


def minilm(trials: list[int], sparsity: float, work: Path, repeats: int,
           max_trials: int | None) -> dict:
    torch.set_num_threads(2)
    model, tok = zoo.load_minilm()
    ids = zoo.minilm_inputs(tok, 8, 128)
    x = np.ascontiguousarray(ids.numpy())
    default = tetris_tvm.compile(model, (ids,), sparsity=sparsity)
    plan = default.plan  # tune and compile the very same pruned model (no re-pruning)
    runs = []
    fns = {"torch": lambda: model(ids), "default": lambda: default.run_numpy(x)}
    default._ensure_vm()
    for n in trials:
        t0 = time.perf_counter()
        result = tune(model, (ids,), work_dir=work, trials=n, sparsity=sparsity, plan=plan,
                      max_trials_global=max_trials)
        tune_s = time.perf_counter() - t0
        print(result.format_table(), flush=True)
        cm = tetris_tvm.compile(model, (ids,), sparsity=sparsity, plan=plan, tuning=work)
        out, ref = cm(ids), default(ids)
        out = (out[0] if isinstance(out, tuple) else out).numpy()
        ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        cm._ensure_vm()
        fns[f"tuned{n}"] = lambda cm=cm: cm.run_numpy(x)
        runs.append({"trials": n, "max_trials_global": max_trials, "tune_s": tune_s,
                     "trials_this_run": result.trials_this_run,
                     "tuned_kernels": cm.report.totals["tuned_kernels"],
                     "max_rel_diff_vs_default": err, "tasks": _task_rows(result)})
    with torch.no_grad():
        times = time_interleaved(fns, repeats=repeats)
    for run in runs:
        run["ms"] = times[f"tuned{run['trials']}"] * 1e3
        run["speedup_vs_default"] = times["default"] / times[f"tuned{run['trials']}"]
        run["speedup_vs_torch"] = times["torch"] / times[f"tuned{run['trials']}"]
    return {"model": "minilm", "batch": 8, "seq": 128, "sparsity": sparsity,
            "torch_ms": times["torch"] * 1e3, "default_ms": times["default"] * 1e3,
            "runs": runs}


def kernel_tasks(sparsity: float, block: int, seed: int = 0) -> list[KernelTask]:
    rng = np.random.default_rng(seed)
    tasks = []
    for k_in, n_out in LINEAR_SHAPES:
        w = rng.standard_normal((n_out, k_in)).astype(np.float32)
        mask = random_block_mask((-(-n_out // block), -(-k_in // block)), sparsity, rng)
        bsr = BSRMatrix.from_dense(w, (block, block), mask)
        args = K.linear_weight_args(bsr, fmt="bsr")
        index = {i + 1: a for i, a in enumerate(args) if a.dtype.kind == "i"}
        for m in LINEAR_M:
            func = K.block_sparse_linear((m, k_in), bsr, fmt="bsr")
            tasks.append(KernelTask(f"linear {k_in}->{n_out} M={m}", func, 1, index))
    return tasks


def kernels(trials: list[int], sparsity: float, block: int, work: Path) -> dict:
    tasks = kernel_tasks(sparsity, block)
    runs = []
    for n in trials:
        t0 = time.perf_counter()
        result = tune_tasks(tasks, resolve_target("llvm"), work, n)
        print(result.format_table(), flush=True)
        runs.append({"trials": n, "tune_s": time.perf_counter() - t0,
                     "trials_this_run": result.trials_this_run, "tasks": _task_rows(result)})
    return {"block": block, "sparsity": sparsity, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("minilm", "kernels"))
    parser.add_argument("--trials", type=int, nargs="+", default=[64],
                        help="trial budgets per task, run one after the other (resuming)")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--block", type=int, default=32, help="kernels: block size")
    parser.add_argument("--repeats", type=int, default=7, help="minilm: interleaved repeats")
    parser.add_argument("--max-trials", type=int, help="minilm: cap on each run's trials")
    parser.add_argument("--work-dir", help="tuning work dir (default: a fresh temporary one)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tetris-tuning-bench-"))
    if args.what == "minilm":
        res = minilm(args.trials, args.sparsity, work, args.repeats, args.max_trials)
        print(f"\nMiniLM b8 s={args.sparsity}: torch {res['torch_ms']:.1f} ms, default "
              f"{res['default_ms']:.1f} ms")
        for run in res["runs"]:
            print(f"  tuned {run['trials']} trials/task: {run['ms']:.1f} ms "
                  f"({run['speedup_vs_default']:.2f}x vs default, "
                  f"{run['speedup_vs_torch']:.2f}x vs torch); tuning took {run['tune_s']:.0f} s")
    else:
        res = kernels(args.trials, args.sparsity, args.block, work)
    res["machine"] = {"platform": platform.platform(), "python": sys.version.split()[0],
                      "cores": len(os.sched_getaffinity(0)),
                      "threads": int(os.environ["TVM_NUM_THREADS"])}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
