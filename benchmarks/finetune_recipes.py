"""Which fine-tuning recipe recovers MiniLM best on a short budget: a small ablation.

Each recipe fine-tunes all-MiniLM-L6-v2 at 50% sparsity in 32x32 blocks for the same few
steps (default 300; cubic ramp, uniform per-layer sparsity, the compiler's folding
constraints) and reports held-out cosine, pair Spearman and WordSim353, plus the cosine on
149 training sentences (the gap between the two says whether more data or more steps would
help). Results are appended to a JSON-lines file, one line per recipe.

    python benchmarks/finetune_recipes.py --steps 300 --recipes base lr1e-4 hid hid1e-3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import quality, zoo  # noqa: E402

RECIPES = {
    "base": {"lr": 3e-4},
    "lr1e-4": {"lr": 1e-4},
    "base1e-3": {"lr": 1e-3},
    "hid": {"lr": 3e-4, "hidden_layers": "auto"},
    "hid1e-3": {"lr": 1e-3, "hidden_layers": "auto"},
    "hid2e-3": {"lr": 2e-3, "hidden_layers": "auto"},
    "os_rec1e-3": {"lr": 1e-3, "hidden_layers": "auto", "schedule": "oneshot",
                   "reconstruct_first": True},
}
"""name -> finetune() keywords: ``hid`` = intermediate-layer distillation (the blocks'
outputs), ``os_rec`` = the target sparsity from the first step, starting from the one-shot
reconstructed model."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune_recipes.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = zoo.load_minilm()
    data = quality.minilm_training_batches(tok, batch=32)
    calibration = quality.minilm_calibration(tok, n=256)
    heldout = quality.EncoderEvaluator(model, tok)
    split = quality.text_split()
    train_side = quality.EncoderEvaluator(model, tok, sentences=split.train[::40][:149],
                                          word_sets=())
    example = (zoo.minilm_inputs(tok, 8, 128),)
    overrides = {"pooler.*": {"skip": True}}
    planner = tetris_tvm.graph_planner(model, example, (32, 32), overrides=overrides)
    for name in args.recipes:
        kw = {"allocation": "uniform", **RECIPES[name]}
        t0 = time.perf_counter()
        tuned, _ = tetris_tvm.finetune(
            copy.deepcopy(model), data, args.sparsity, (32, 32), steps=args.steps,
            prune_every=max(args.steps // 30, 1), method="tetris", overrides=overrides,
            planner=planner, calibration=calibration, progress=False, **kw)
        row = {"variant": name, "steps": args.steps, "s": args.sparsity,
               "seconds": time.perf_counter() - t0, "heldout": heldout.evaluate(tuned),
               "train_cos": train_side.evaluate(tuned)["cosine"]}
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
