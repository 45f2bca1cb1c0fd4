"""Attention on CPU: op by op, fused in float32, fused in int8 -- all-MiniLM-L6-v2, side by side.

Rows (ours, dense, every Linear the same in each pair of rows):

- float32 builds with attention as torch's decomposition imports it (two batched matmuls, mask,
  softmax, NaN guard, four transposes: what ``compile`` made before the fused kernel; here by
  making the importer keep no attention) and with the fused kernel (the default);
- int8 builds (dynamic activations) with the same op-by-op attention, the fused float32 kernel
  (``attention="float32"``) and the fused int8 kernel (``attention="int8"``, the default);
- OpenVINO float32 and int8 (NNCF post-training quantization on the same calibration
  sentences) as the baselines a user has.

Quality: each row's own held-out metrics (cosine of mean-pooled embeddings to dense float32 on
lee.cor and on the out-of-domain sets, WordSim353 Spearman), compiled with the attention mask
as an input. Speed: batch 8 and 1 x 128 tokens, 2 threads, interleaved in one process, median.

    python benchmarks/attention.py                  # ~15 min on 2 cores
    python benchmarks/attention.py --no-peers --batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from int8 import _cpu_features, _peer_variants, own_quality  # noqa: E402  (beside this script)
from minilm_plans import SKIP  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import frontend, peers, quality, zoo  # noqa: E402
from tetris_tvm.bench import cpu_name, median_interleaved, wall_sampler  # noqa: E402

RESULTS = Path(__file__).parent / "results"

BUILDS: list[tuple[str, dict[str, Any], bool]] = [  # (row, compile options, fused attention)
    ("float32, attention op by op", {}, False),
    ("float32, fused attention", {}, True),
    ("int8, attention op by op (float32)", {"quantize": "int8"}, False),
    ("int8, fused float32 attention", {"quantize": "int8", "attention": "float32"}, True),
    ("int8, fused int8 attention", {"quantize": "int8", "attention": "int8"}, True),
]


@contextlib.contextmanager
def attention_import(fused: bool) -> Iterator[None]:
    """Builds made inside import attention whole (``fused``, the default) or op by op (the
    importer keeps none)."""
    keep = frontend.keepable_attention
    if not fused:
        frontend.keepable_attention = lambda exported: False
    try:
        yield
    finally:
        frontend.keepable_attention = keep


def compile_row(model: Any, inputs: tuple, options: dict[str, Any], fused: bool) -> Any:
    """A dense build; ``fused=False`` imports attention op by op."""
    with attention_import(fused):
        return tetris_tvm.compile(model, inputs, sparsity=0.0, block_size=32, overrides=SKIP,
                                  progress=False, **options)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--repeats", type=int, default=15, help="interleaved repeats (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "attention_minilm.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = zoo.load_minilm()
    evaluator = quality.EncoderEvaluator(model, tok)
    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, metrics: dict[str, float], **extra: Any) -> None:
        ood = {k: v for k, v in metrics.items() if k.startswith("cosine_")}
        rows[name] = {"cosine": metrics["cosine"], **ood, "wordsim353": metrics["wordsim353"],
                      "ms": {}, **extra}
        print(f"{name:<40} cosine {metrics['cosine']:.4f}  out-of-domain "
              f"{metrics.get('cosine_ood', float('nan')):.4f}  wordsim353 "
              f"{metrics['wordsim353']:.3f}", flush=True)

    compiled: dict[tuple[str, int], Any] = {}
    for name, options, fused in BUILDS:
        for batch in args.batch:
            ids = zoo.minilm_inputs(tok, batch, 128)
            compiled[(name, batch)] = compile_row(model, (ids,), options, fused)
        with attention_import(fused):
            own = own_quality(model, evaluator, {**options, "sparsity": 0.0}, tok)
        record(name, own, attention=compiled[(name, args.batch[0])].plan.quantization.get(
            "attention", "float32"), fused=fused)
    peer_models: dict[str, Any] = {}
    if not args.no_peers:
        ids8 = zoo.minilm_inputs(tok, 8, 128)
        calibration = quality.minilm_calibration(tok, n=256)
        nncf_data = [(b["input_ids"], b["attention_mask"]) for b in calibration]
        for variant, reason in _peer_variants():
            if variant not in ("openvino", "openvino-int8"):
                continue
            if reason:
                print(f"{variant}: skipped ({reason})")
                continue
            start = time.perf_counter()
            peer = peers.build(variant, model, (ids8, torch.ones_like(ids8)), args.threads,
                               calibration=nncf_data if variant.endswith("int8") else None)
            peer_models[variant] = peer
            module = peers.as_torch_module(peer, ["input_ids", "attention_mask"], as_tuple=True)
            record(variant, evaluator.evaluate(module), prepare_s=time.perf_counter() - start)
    for batch in args.batch:
        ids = zoo.minilm_inputs(tok, batch, 128)
        samplers = {}
        for variant, peer in peer_models.items():
            samplers[variant] = wall_sampler(peer.timer(ids.numpy(), np.ones_like(ids.numpy())))
        for name, _, _ in BUILDS:
            cm = compiled[(name, batch)]
            cm._ensure_vm()
            arrays = [np.ascontiguousarray(ids.numpy())]
            samplers[name] = wall_sampler(lambda cm=cm, a=arrays: cm.run_numpy(*a))
        print(f"\ntiming batch {batch} ({args.repeats} interleaved repeats) ...", flush=True)
        for name, t in median_interleaved(samplers, repeats=args.repeats).items():
            rows[name]["ms"][str(batch)] = t * 1e3
    print(f"\n{'build':<40} " + " ".join(f"{'b' + str(b) + ' ms':>9}" for b in args.batch)
          + "   cosine  ood     wordsim")
    for name, row in rows.items():
        print(f"{name:<40} " + " ".join(f"{row['ms'].get(str(b), float('nan')):9.2f}"
                                        for b in args.batch)
              + f"   {row['cosine']:.4f}  {row.get('cosine_ood', float('nan')):.4f}  "
              f"{row['wordsim353']:.3f}")
    out = {"cpu": cpu_name(), "cpu_features": _cpu_features(), "threads": args.threads,
           "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
