"""One-shot recovery against calibration sets small and large, in and out of domain.

MiniLM (all-MiniLM-L6-v2) at one sparsity and block: plain magnitude TETRIS (no calibration)
next to the default one-shot recipe (``calibration=`` alone: activation-aware importance,
sensitivity allocation, reconstruction, the held-back check) on

- ``templated-16``: 16 short sentences from one template, input ids only (no attention mask),
  the kind of calibration set a user writes by hand;
- ``lee-16`` / ``lee-64`` / ``lee-256``: sentences drawn from the calibration corpus.

Each row: held-out cosine to the dense sentence embeddings in-domain (lee.cor) and out of
domain (conversation, technical prose), the held-back check's two output errors and whether
the plain plan was used, and the seconds the planning took.

    python benchmarks/calibration_size.py                       # 50% 32x32, ~10 min on 2 cores
    python benchmarks/calibration_size.py --sparsity 0.75 --json benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import quality, zoo  # noqa: E402

SKIP = {"pooler.*": {"skip": True}}
TEMPLATE = [f"Item {i} of the list is a {c} {t}." for i, (c, t) in enumerate(
    (c, t) for c in ("red", "small", "new", "cheap") for t in ("car", "house", "book", "phone"))]


def calibration_sets(tok: Any) -> dict[str, Any]:
    """``{name: calibration batches or None}`` (None: plain magnitude TETRIS)."""
    ids = tok(TEMPLATE, padding=True, return_tensors="pt")["input_ids"]
    return {
        "none (magnitude TETRIS)": None,
        "templated-16": [ids],
        "lee-16": quality.minilm_calibration(tok, n=16, batch=16),
        "lee-64": quality.minilm_calibration(tok, n=64),
        "lee-256": quality.minilm_calibration(tok, n=256),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/calibration_size.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = zoo.load_minilm()
    ev = quality.EncoderEvaluator(model, tok)
    example = (zoo.minilm_inputs(tok, 8, 128),)
    rows = []
    for name, cal in calibration_sets(tok).items():
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = tetris_tvm.plan_model(model, example, args.sparsity,
                                         (args.block, args.block), overrides=SKIP,
                                         calibration=cal, progress=False)
        took = time.perf_counter() - start
        got = ev.evaluate(plan.apply(copy.deepcopy(model), keep=False))
        row = {"calibration": name, "seconds": took, **got,
               "holdout_check": plan.settings.get("holdout_check"),
               "warnings": [str(w.message)[:160] for w in caught]}
        rows.append(row)
        check = row["holdout_check"] or {}
        print(f"{name:<24} in-domain {got['cosine']:.3f}  conversation "
              f"{got['cosine_conversation']:.3f}  technical {got['cosine_technical']:.3f}  "
              f"check {check.get('recovered', float('nan')):.3f}/"
              f"{check.get('plain', float('nan')):.3f} used {check.get('used', 'recovered')}  "
              f"{took:.0f} s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "model": "all-MiniLM-L6-v2", "sparsity": args.sparsity, "block": args.block,
        "command": f"python benchmarks/calibration_size.py --sparsity {args.sparsity} "
                   f"--block {args.block}",
        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
