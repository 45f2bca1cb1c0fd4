"""Does calibration text without short inputs cost MiniLM its word similarity?

One-shot plans of the compiler (default recipe of ``calibration=``) at 50% from 256 news
sentences, with and without 256 single words added to the calibration set. The words are
whole-word tokens of the tokenizer's vocabulary drawn with a fixed seed, never a word of the
WordSim353 or SimLex-999 pairs the metrics use. Each plan's reference (masked model with the
refitted weights) is measured on held-out data: sentence cosine in-domain and out of domain,
WordSim353, SimLex-999.

    python benchmarks/short_calibration.py                    # 16x16 and 32x32, ~15 min
    python benchmarks/short_calibration.py --blocks 32x32
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
from minilm_plans import SKIP, one_shot_plan  # noqa: E402  (benchmarks/, beside this script)

import tetris_tvm  # noqa: E402
from tetris_tvm import quality, zoo  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METRICS = ("cosine", "cosine_ood", "wordsim353", "simlex999")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", nargs="+", default=["16x16", "32x32"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--words", type=int, default=256)
    ap.add_argument("--out", default=str(RESULTS / "short_calibration.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, tok = zoo.load_minilm()
    evaluator = quality.EncoderEvaluator(model, tok)
    with_words = quality.minilm_calibration(tok, n=256, words=args.words)
    ids = zoo.minilm_inputs(tok, 8, 128)
    rows = []
    for text in args.blocks:
        block = tuple(int(b) for b in text.split("x"))
        for name in ("sentences", "sentences + words"):
            if name == "sentences":  # the benchmarks' cached plan of the same recipe
                plan = one_shot_plan(model, tok, args.sparsity, block)
                seconds = plan.settings["seconds"]
            else:
                start = time.perf_counter()
                plan = tetris_tvm.plan_model(model, (ids,), args.sparsity, block,
                                             overrides=SKIP, calibration=with_words,
                                             progress=False)
                seconds = time.perf_counter() - start
            metrics = evaluator.evaluate(plan.apply(copy.deepcopy(model), keep=False))
            row = {"block": text, "calibration": name, "seconds": seconds,
                   **{k: metrics[k] for k in METRICS}}
            rows.append(row)
            print(f"{text:<6} {name:<18} " + "  ".join(f"{k} {row[k]:.3f}" for k in METRICS)
                  + f"  ({seconds:.0f} s)", flush=True)
    out = {"sparsity": args.sparsity, "words": args.words, "sentences": 256,
           "dense": {k: evaluator.dense.get(k) for k in METRICS}, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
