"""Sparsity on top of int8: all-MiniLM-L6-v2 against the runtimes a user already has, at
every precision, each row with its held-out quality and its speed.

Rows: torch eager; ONNX Runtime float32 and int8 (``quantize_dynamic``); OpenVINO float32
(precision hint f32), its default precision on this CPU (bfloat16 where it has AVX512-BF16 or
AMX) and int8 (NNCF post-training quantization on the calibration set); ours dense and
block-sparse (32x32) in float32 and int8 (dynamic per-token activations; static per-layer
ranges for the dense build too). Block-sparse builds use one plan per sparsity, made
one-shot with the default recipe of ``calibration=`` alone (activation-aware TETRIS,
sensitivity allocation of the per-layer sparsities, reconstruction, checked on held-back
calibration inputs), the same plan for float32 and int8. The calibration set, ours and
NNCF's: 256 calibration sentences and 256 single vocabulary words (none from the
word-similarity sets; ``--calibration-words``).

Quality (held-out sentences no step saw: ``lee.cor`` in-domain, conversation and technical
prose out of domain): mean cosine of the mean-pooled embeddings to the dense float32
model's, and WordSim353 Spearman, of every row's own outputs: the peers run the sentences,
and each of our builds is compiled once more with the attention mask as an input (batch 8 x
128, sentences padded). The reference's metrics (the masked model with the same fake
quantization) are recorded too, and how close the build's hidden states are to it and to
float32 (token cosine on the timing input).
Speed: batch 8 and 1 x 128 tokens, 2 threads, interleaved in one process, median.

    python benchmarks/int8.py                       # everything, ~40 min on 2 cores
    python benchmarks/int8.py --quick               # batch 8, fewer rows and repeats
    python benchmarks/int8.py --out benchmarks/results/int8_minilm.json
    python benchmarks/int8.py --magnitude --quick --out \
        benchmarks/results/int8_minilm_magnitude.json    # plain magnitude TETRIS plans

``--magnitude`` plans the block-sparse rows with plain magnitude TETRIS (uniform per-layer
sparsity, no calibration): the plan the speed targets are stated for; its quality is low.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from minilm_plans import SKIP, one_shot_plan  # noqa: E402  (benchmarks/, beside this script)

import tetris_tvm  # noqa: E402
from tetris_tvm import peers, quality, zoo  # noqa: E402
from tetris_tvm.bench import cpu_name, median_interleaved, wall_sampler  # noqa: E402
from tetris_tvm.quantization import quantized_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"


class WithMask(torch.nn.Module):
    """The encoder taking (input_ids, attention_mask) positionally (what is compiled to
    measure a build's own held-out quality on padded batches)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        return self.m(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids)[0]


class CompiledEncoder(torch.nn.Module):
    """A build of :class:`WithMask` at a fixed (batch, 128) behind the encoder's interface:
    sentences are padded (mask 0) to its shape, so the held-out metrics are the build's own."""

    def __init__(self, cm: Any, batch: int, seq: int = 128) -> None:
        super().__init__()
        self.cm, self.batch, self.seq = cm, batch, seq

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        n, t = input_ids.shape
        out = []
        for i in range(0, n, self.batch):
            ids = torch.zeros((self.batch, self.seq), dtype=input_ids.dtype)
            mask = torch.zeros((self.batch, self.seq), dtype=attention_mask.dtype)
            rows = min(self.batch, n - i)
            ids[:rows, :t] = input_ids[i:i + rows]
            mask[:rows, :t] = attention_mask[i:i + rows]
            mask[rows:, 0] = 1  # filler rows attend to one token (their output is dropped)
            out.append(self.cm(ids, mask)[:rows, :t])
        return (torch.cat(out),)


def own_quality(model: Any, evaluator: Any, options: dict[str, Any], tok: Any) -> dict:
    """Held-out metrics of the compiled build itself (inputs padded to batch 8 x 128)."""
    ids = zoo.minilm_inputs(tok, 8, 128)
    opts = dict(options)
    if "plan" in opts:  # the wrapper's parameters are the model's under "m."
        p = opts["plan"]
        opts["plan"] = tetris_tvm.PruningPlan(
            layers={f"m.{k}": v for k, v in p.layers.items()},
            params={f"m.{k}": v for k, v in p.params.items()}, settings=dict(p.settings))
    else:
        opts["overrides"] = {"m.pooler.*": {"skip": True}}
    cm = tetris_tvm.compile(WithMask(model), (ids, torch.ones_like(ids)),
                            block_size=None if "plan" in opts else 32, progress=False, **opts)
    return evaluator.evaluate(CompiledEncoder(cm, 8))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--repeats", type=int, default=15, help="interleaved repeats (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="batch 8, 5 repeats, no static row")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--calibration-words", type=int, default=256, metavar="N",
                    help="single vocabulary words added to the 256 calibration sentences "
                         "(ours and NNCF's; 0: sentences only)")
    ap.add_argument("--magnitude", action="store_true",
                    help="block-sparse rows from plain magnitude TETRIS plans (no calibration)")
    ap.add_argument("--out", default=str(RESULTS / "int8_minilm.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = [8], 5
    torch.set_num_threads(args.threads)
    model, tok = zoo.load_minilm()
    evaluator = quality.EncoderEvaluator(model, tok)
    calibration = quality.minilm_calibration(tok, n=256, words=args.calibration_words)
    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, kind: str, metrics: dict[str, float], **extra: Any) -> None:
        ood = {k: v for k, v in metrics.items() if k.startswith("cosine_")}
        rows[name] = {"kind": kind, "cosine": metrics["cosine"], **ood,
                      "wordsim353": metrics["wordsim353"], "ms": {}, **extra}
        print(f"{name:<32} cosine {metrics['cosine']:.4f}  out-of-domain "
              f"{metrics.get('cosine_ood', float('nan')):.4f}  wordsim353 "
              f"{metrics['wordsim353']:.3f}", flush=True)

    record("torch eager (float32)", "dense", evaluator.dense)
    if args.magnitude:
        example = (zoo.minilm_inputs(tok, 8, 128),)
        plans = {s: tetris_tvm.plan_model(model, example, s, (32, 32), overrides=SKIP,
                                          progress=False) for s in args.sparsity}
    else:
        plans = {s: one_shot_plan(model, tok, s, words=args.calibration_words)
                 for s in args.sparsity}
    builds: list[tuple[str, dict[str, Any]]] = [
        ("ours dense float32", {"sparsity": 0.0}),
        ("ours dense int8", {"sparsity": 0.0, "quantize": "int8"}),
    ]
    if not args.quick:
        builds.append(("ours dense int8 (static)", {"sparsity": 0.0, "quantize": "int8",
                                                   "activations": "static",
                                                   "calibration": calibration}))
    for s in args.sparsity:
        builds += [(f"ours {s:.0%} float32", {"plan": plans[s]}),
                   (f"ours {s:.0%} int8", {"plan": plans[s], "quantize": "int8"})]
    compiled: dict[tuple[str, int], Any] = {}
    for name, options in builds:
        for batch in args.batch:
            ids = zoo.minilm_inputs(tok, batch, 128)
            opts = dict(options)
            if "plan" not in opts:
                opts["overrides"] = SKIP
            start = time.perf_counter()
            cm = tetris_tvm.compile(model, (ids,), block_size=None if "plan" in opts else 32,
                                    progress=False, **opts)
            seconds = time.perf_counter() - start
            compiled[(name, batch)] = cm
        reference = quantized_reference(model, cm.plan)
        with torch.no_grad():
            want = reference(ids)[0].numpy().reshape(-1, 384)
            dense = model(ids)[0].numpy().reshape(-1, 384)
        got = cm(ids)[0].numpy().reshape(-1, 384)
        own = own_quality(model, evaluator, options, tok)
        ref_metrics = evaluator.evaluate(reference)
        record(name, "ours", own, compile_s=seconds,
               reference={k: v for k, v in ref_metrics.items()
                          if k.startswith("cosine") or k == "wordsim353"},
               token_cosine={"compiled_vs_reference": quality.mean_row_cosine(got, want),
                             "compiled_vs_float32": quality.mean_row_cosine(got, dense),
                             "reference_vs_float32": quality.mean_row_cosine(want, dense)},
               weights_kept=cm.report.totals["weights_kept_fraction"],
               precision=cm.plan.quantization.get("scheme", "float32"),
               dot=cm.plan.quantization.get("dot"))
        print(f"{'':<32} its reference: cosine {ref_metrics['cosine']:.4f}  wordsim353 "
              f"{ref_metrics['wordsim353']:.3f}", flush=True)
    peer_models: dict[str, Any] = {}
    if not args.no_peers:
        ids8 = zoo.minilm_inputs(tok, 8, 128)
        example = (ids8, torch.ones_like(ids8))
        nncf_data = [(b["input_ids"], b["attention_mask"]) for b in calibration]
        for variant, reason in _peer_variants():
            if reason:
                print(f"{variant}: skipped ({reason})")
                continue
            start = time.perf_counter()
            peer = peers.build(variant, model, example, args.threads,
                               calibration=nncf_data if variant.endswith("int8") else None)
            peer_models[variant] = peer
            module = peers.as_torch_module(peer, ["input_ids", "attention_mask"], as_tuple=True)
            record(variant, "peer", evaluator.evaluate(module),
                   prepare_s=time.perf_counter() - start)
    for batch in args.batch:
        ids = zoo.minilm_inputs(tok, batch, 128)
        mask = torch.ones_like(ids)
        samplers = {}
        with torch.no_grad():
            samplers["torch eager (float32)"] = wall_sampler(lambda ids=ids: model(ids))
        for variant, peer in peer_models.items():
            samplers[variant] = wall_sampler(peer.timer(ids.numpy(), mask.numpy()))
        for name, _ in builds:
            cm = compiled[(name, batch)]
            cm._ensure_vm()
            args_np = [np.ascontiguousarray(ids.numpy())]
            samplers[name] = wall_sampler(lambda cm=cm, a=args_np: cm.run_numpy(*a))
        print(f"\ntiming batch {batch} ({args.repeats} interleaved repeats) ...", flush=True)
        times = median_interleaved(samplers, repeats=args.repeats)
        for name, t in times.items():
            rows[name]["ms"][str(batch)] = t * 1e3
    _print_table(rows, args.batch)
    out = {"machine": platform.processor() or platform.machine(), "cpu": cpu_name(),
           "cpu_features": _cpu_features(),
           "threads": args.threads, "repeats": args.repeats, "block": [32, 32],
           "plan_recipe": "magnitude" if args.magnitude else "one-shot (calibration=)",
           "calibration": {"sentences": 256, "words": args.calibration_words},
           "plans": {str(s): {k: plans[s].settings.get(k) for k in ("importance", "seconds")}
                     for s in args.sparsity},
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwritten {args.out}")
    return 0


def _peer_variants() -> list[tuple[str, str | None]]:
    found = peers.available()
    out = []
    for variant in peers.VARIANTS:
        reason = found.get(variant.split("-")[0])
        if reason is None and variant == "openvino-int8":
            import importlib.util

            if importlib.util.find_spec("nncf") is None:
                reason = "nncf is not installed (pip install -e \".[peers]\")"
        out.append((variant, reason))
    return out


def _cpu_features() -> list[str]:
    """The SIMD features that decide the int8 and bf16 paths (from /proc/cpuinfo)."""
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_int8", "amx_bf16")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def _print_table(rows: dict[str, dict[str, Any]], batches: list[int]) -> None:
    ov = rows.get("openvino", {}).get("ms", {})
    ov8 = rows.get("openvino-int8", {}).get("ms", {})
    print(f"\n{'runtime':<32} " + " ".join(f"{'b' + str(b) + ' ms':>9}" for b in batches)
          + "  vs OV f32  vs OV int8  cosine  wordsim353")
    for name, r in rows.items():
        ms = r["ms"]
        b = str(batches[0])
        rel = f"{ov[b] / ms[b]:>9.2f}x" if b in ov and b in ms else " " * 10
        rel8 = f"{ov8[b] / ms[b]:>10.2f}x" if b in ov8 and b in ms else " " * 11
        print(f"{name:<32} " + " ".join(f"{ms.get(str(x), float('nan')):>9.1f}" for x in batches)
              + f" {rel} {rel8}  {r['cosine']:.4f}  {r['wordsim353']:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
