"""Quality kept by one-shot pruning on held-out data, step by step, and the compiled speed.

For all-MiniLM-L6-v2 (sentence embeddings) and the MNIST CNN, at each sparsity and block size,
one row per pruning recipe, each adding one step to the one before:

- element-wise magnitude (the accuracy anchor; unstructured, so no block-sparse speedup),
  and element-wise with activation importance and reconstruction (the strongest anchor);
- block pruning without reordering; TETRIS on ``|W|``; + activation-aware importance;
  + layer-wise reconstruction; + sensitivity allocation of per-layer sparsities;
- ``compiled``: the same recipe planned by ``tetris_tvm.plan_model`` (permutations that fold
  away in the compiled graph), built with ``tetris_tvm.compile`` and timed against dense
  torch eager and our own dense build (interleaved, median), next to its quality.

Calibration uses the calibration side of the fixed splits only (512 sentences of the Lee
background corpus, 1000 of the 4000 training images); every metric is measured on the
held-out side (sentences of ``lee.cor``, WordSim353, SimLex-999, the 1000 held-out images).
Rows already in the JSON file are kept (the run resumes); ``--only`` picks a subset.

    python benchmarks/quality.py --json benchmarks/results/quality.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import quality, zoo  # noqa: E402
from tetris_tvm.bench import check_and_time  # noqa: E402

RECIPES: list[tuple[str, dict[str, Any]]] = [
    ("element-wise magnitude", {"method": "element"}),
    ("element-wise + activation + reconstruction",
     {"method": "element", "importance": "activation", "reconstruct": True,
      "allocation": "uniform"}),
    ("block, no reorder", {"reorder": False}),
    ("TETRIS (magnitude)", {}),
    ("+ activation-aware",
     {"importance": "activation", "reconstruct": False, "allocation": "uniform"}),
    ("+ reconstruction",
     {"importance": "activation", "reconstruct": True, "allocation": "uniform"}),
    ("+ sensitivity allocation",
     {"importance": "activation", "reconstruct": True, "allocation": "sensitivity"}),
]
COMPILED = {"importance": "activation", "reconstruct": True, "allocation": "sensitivity"}
CONFIGS = {
    "minilm": [(0.5, 32), (0.75, 32), (0.5, 16), (0.75, 16)],
    "mnist-cnn": [(0.75, 8), (0.9, 8)],
}


def _needs_data(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("importance", "magnitude") != "magnitude" or bool(
        kwargs.get("reconstruct")) or kwargs.get("allocation", "uniform") != "uniform"


class Workload:
    """A dense model, its calibration batches, its held-out metrics and a timing input."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "minilm":
            self.model, tok = zoo.load_minilm()
            self.calibration = quality.minilm_calibration(tok, n=512)
            self.evaluator = quality.EncoderEvaluator(self.model, tok)
            self.dense_metrics = dict(self.evaluator.dense)
            self.example = (zoo.minilm_inputs(tok, 8, 128),)
            self.skip = {"pooler.*": {"skip": True}}  # not part of the sentence embedding
        else:
            self.model = zoo.load_mnist_cnn()
            self.calibration = quality.mnist_calibration(n=1000)
            _, (self.hx, self.hy) = quality.mnist_split()
            self.dense_metrics = {"accuracy": self.metrics(self.model)["accuracy"]}
            self.example = (torch.from_numpy(self.hx[:100]),)
            self.skip = {}

    def metrics(self, model: Any) -> dict[str, float]:
        if self.name == "minilm":
            return self.evaluator.evaluate(model)
        return {"accuracy": quality.classifier_accuracy(model.eval(), self.hx, self.hy)}


def _kept_l1(plan: Any) -> float:
    return float(np.mean([lp.retained_l1 for lp in plan.values()]))


def run_recipe(w: Workload, s: float, b: int, recipe: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(recipe)
    if _needs_data(kwargs):
        kwargs["calibration"] = w.calibration
    t0 = time.perf_counter()
    plan = tetris_tvm.prune(w.model, s, (b, b), overrides=w.skip, **kwargs)
    took = time.perf_counter() - t0
    pruned = plan.apply(copy.deepcopy(w.model), keep=False)
    return {"retained_l1": _kept_l1(plan), "seconds": took, **w.metrics(pruned),
            "layer_sparsity": {n: 1.0 - lp.density for n, lp in plan.items()}}


def run_compiled(w: Workload, s: float, b: int, dense_cm: Any, repeats: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    plan = tetris_tvm.plan_model(w.model, w.example, s, (b, b), overrides=w.skip,
                                 calibration=w.calibration, **COMPILED)
    took = time.perf_counter() - t0
    pruned = plan.apply(copy.deepcopy(w.model), keep=False)
    row = {"retained_l1": _kept_l1(plan), "seconds": took, **w.metrics(pruned)}
    cm = tetris_tvm.compile(w.model, w.example, plan=plan)
    row.update(check_and_time(cm, dense_cm, w.model, pruned, w.example, repeats))
    return row


def fmt(row: dict[str, Any]) -> str:
    keys = [k for k in ("cosine", "cosine_conversation", "cosine_technical", "cosine_ood",
                        "pair_spearman", "wordsim353", "simlex999", "accuracy",
                        "retained_l1", "seconds", "ms_pruned", "ms_torch_eager") if k in row]
    return ", ".join(f"{k} {row[k]:.3f}" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/quality.json"))
    ap.add_argument("--only", nargs="*", default=None,
                    help="models to run (minilm, mnist-cnn); default both")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved timing repeats")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    ap.add_argument("--configs", nargs="*", default=None,
                    help="sparsity:block pairs to run, e.g. 0.5:32 (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    results.setdefault("rows", [])
    done = {(r["model"], r["sparsity"], r["block"], r["recipe"]) for r in results["rows"]}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))

    for model_name, configs in CONFIGS.items():
        if args.only and model_name not in args.only:
            continue
        w = Workload(model_name)
        results.setdefault("dense", {})[model_name] = w.dense_metrics
        dense_cm = None
        for s, b in configs:
            if args.configs and f"{s}:{b}" not in args.configs:
                continue
            todo = list(RECIPES) + ([] if args.no_compile else [("compiled", COMPILED)])
            for label, recipe in todo:
                if (model_name, s, b, label) in done:
                    continue
                if label == "compiled":
                    if dense_cm is None:
                        dense_cm = tetris_tvm.compile(w.model, w.example, sparsity=0.0)
                    row = run_compiled(w, s, b, dense_cm, args.repeats)
                else:
                    row = run_recipe(w, s, b, recipe)
                row.update(model=model_name, sparsity=s, block=b, recipe=label)
                results["rows"].append(row)
                save()
                print(f"{model_name:<9} s={s} {b}x{b} {label:<44} {fmt(row)}", flush=True)
    save()
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
