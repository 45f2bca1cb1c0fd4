"""What reconstruction's damping pulls towards, and which text it calibrates on.

MiniLM at 50% 32x32, activation-aware TETRIS (uniform), then layer-wise reconstruction with
its damping pulling the refit towards zero (ridge) or towards the dense layer's kept weights,
calibrated on 512 (``--n``) sentences of the news corpus (``calibration``) or of the whole training
text (news and Python's documentation, ``train``). Held-out cosine in-domain and out of
domain for each.

    python benchmarks/reconstruction_prior.py       # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import quality, zoo  # noqa: E402
from tetris_tvm.calibration import as_batches  # noqa: E402
from tetris_tvm.reconstruct import reconstruct  # noqa: E402

SKIP = {"pooler.*": {"skip": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", nargs="+", default=["calibration", "train"])
    ap.add_argument("--priors", nargs="+", default=["zero", "dense"])
    ap.add_argument("--n", type=int, default=512, help="calibration sentences")
    ap.add_argument("--json", type=Path,
                    default=Path("benchmarks/results/reconstruction_prior.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    model, tok = zoo.load_minilm()
    ev = quality.EncoderEvaluator(model, tok)
    rows = []
    for source in args.sources:
        cal = quality.minilm_calibration(tok, n=args.n, source=source)
        base = tetris_tvm.prune(model, 0.5, (32, 32), overrides=SKIP, calibration=cal,
                                importance="activation", reconstruct=False,
                                allocation="uniform")
        for prior in args.priors:
            start = time.perf_counter()
            plan, report = reconstruct(model, base, as_batches(cal), prior=prior)
            got = ev.evaluate(plan.apply(copy.deepcopy(model), keep=False))
            rows.append({"source": source, "prior": prior, "sentences": args.n,
                         "seconds": time.perf_counter() - start, **got,
                         "damps": [r.get("damp") for r in report]})
            print(f"{source:<12} {prior:<6} in-domain {got['cosine']:.3f}  conversation "
                  f"{got['cosine_conversation']:.3f}  technical {got['cosine_technical']:.3f}  "
                  f"WordSim353 {got['wordsim353']:.3f}",
                  flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": "all-MiniLM-L6-v2", "sparsity": 0.5,
                                     "block": 32, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
