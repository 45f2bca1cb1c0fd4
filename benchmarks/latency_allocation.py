"""Latency-budget allocation on MiniLM: ``latency=0.5`` against uniform 32x32 blocks at the
same measured latency, float32 and int8.

For each precision:

1. ``plan_model(..., latency=L, quantize=q)`` (the default one-shot recipe of
   ``calibration=``, 256 sentences + 256 words; per-layer sparsity and block shape from
   32x4 / 16x4 / 32x1, chosen on measured kernel times), cached in benchmarks/cache/;
2. the default one-shot 32x32 plans at 50% and 75% (cached, as frontier.py), timed with the
   dense build in a first interleaved round; the 32x32 sparsity whose latency equals the
   latency plan's is interpolated from them, and that 32x32 plan is made (cached): the
   baseline "uniform 32x32 at the same latency";
3. every build timed interleaved (batch 8 x 128 tokens, 2 threads, median of the repeats)
   with OpenVINO float32 and int8 (NNCF, the same calibration set) as the peers a user has;
   quality on held-out text no step saw: in-domain (``lee.cor``), out of domain
   (conversation, technical prose) and WordSim353, of what each build computes
   (:func:`tetris_tvm.quantization.quantized_reference`).

    python benchmarks/latency_allocation.py                      # float32 and int8, ~40 min
    python benchmarks/latency_allocation.py --precision float32 --latency 0.5
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
from minilm_plans import CACHE, SKIP, one_shot_plan  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import peers, quality, zoo  # noqa: E402
from tetris_tvm.bench import cpu_name, median_interleaved, wall_sampler  # noqa: E402
from tetris_tvm.quantization import quantized_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def latency_plan(model: Any, tok: Any, ids: Any, latency: float, precision: str,
                 words: int) -> Any:
    """The latency-allocated plan (cached; ``settings["seconds"]``: planning wall time)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"minilm_latency_{int(latency * 100)}_{precision}_words{words}.npz"
    if path.exists():
        return tetris_tvm.PruningPlan.load(path)
    start = time.perf_counter()
    plan = tetris_tvm.plan_model(
        model, (ids,), latency=latency, overrides=SKIP, progress=True,
        quantize=None if precision == "float32" else precision,
        calibration=quality.minilm_calibration(tok, n=256, words=words))
    plan.settings["seconds"] = time.perf_counter() - start
    plan.save(path)
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.5,
                    help="budget as a fraction of the dense build's time")
    ap.add_argument("--precision", nargs="+", default=["float32", "int8"],
                    choices=["float32", "int8"])
    ap.add_argument("--repeats", type=int, default=11, help="interleaved repeats (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration-words", type=int, default=256, metavar="N")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "latency_allocation_minilm.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = zoo.load_minilm()
    evaluator = quality.EncoderEvaluator(model, tok)
    ids = zoo.minilm_inputs(tok, 8, 128)
    data = [np.ascontiguousarray(ids.numpy())]
    rows: dict[str, dict[str, Any]] = {}
    samplers: dict[str, Any] = {}

    def add(name: str, plan: Any, q: str | None, **extra: Any) -> None:
        options = {"plan": plan} if plan is not None else {"sparsity": 0.0, "block_size": 32,
                                                           "overrides": SKIP}
        cm = tetris_tvm.compile(model, (ids,), progress=False, quantize=q, **options)
        cm._ensure_vm()
        samplers[name] = wall_sampler(lambda cm=cm: cm.run_numpy(*data))
        m = evaluator.evaluate(quantized_reference(model, cm.plan))
        rows[name] = {"precision": q or "float32", "cosine": m["cosine"],
                      "cosine_ood": m["cosine_ood"],
                      **{k: v for k, v in m.items() if k.startswith("cosine_")},
                      "wordsim353": m["wordsim353"],
                      "weights_kept": cm.report.totals["weights_kept_fraction"], **extra}
        print(f"{name:<34} cosine {m['cosine']:.3f}  out of domain {m['cosine_ood']:.3f}  "
              f"WordSim353 {m['wordsim353']:.3f}", flush=True)

    for precision in args.precision:
        q = None if precision == "float32" else precision
        plan = latency_plan(model, tok, ids, args.latency, precision, args.calibration_words)
        info = plan.settings["latency"]
        print(f"{precision}: latency plan in {plan.settings.get('seconds', 0):.0f} s, "
              f"budget {info['budget_ms']:.1f} ms, predicted {info['predicted_ms']:.1f} ms",
              flush=True)
        add(f"dense {precision}", None, q, kind="dense")
        add(f"latency {args.latency:g} {precision}", plan, q, kind="latency",
            budget_ms=info["budget_ms"], predicted_ms=info["predicted_ms"],
            planning_s=plan.settings.get("seconds"), fixed_ms=info["fixed_ms"],
            scale=info["scale"], dense_planning_ms=info["dense_ms"],
            reference_ms=info["reference_ms"], choices=info["choices"])
        for s in (0.5, 0.75):
            add(f"32x32 {s:.0%} {precision}", one_shot_plan(model, tok, s, (32, 32),
                                                            args.calibration_words),
                q, kind="uniform32", sparsity=s)
        names = [f"dense {precision}", f"latency {args.latency:g} {precision}",
                 f"32x32 50% {precision}", f"32x32 75% {precision}"]
        first = median_interleaved({n: samplers[n] for n in names}, repeats=5)
        t50, t75, tl = (first[names[2]], first[names[3]], first[names[1]])
        s_eq = 0.5 + 0.25 * (t50 - tl) / (t50 - t75) if t50 != t75 else 0.5
        s_eq = round(float(np.clip(s_eq, 0.3, 0.9)), 2)
        print(f"{precision}: latency plan {tl * 1e3:.1f} ms, 32x32 50% {t50 * 1e3:.1f} / "
              f"75% {t75 * 1e3:.1f} ms -> 32x32 at {s_eq:.0%} for the same latency", flush=True)
        add(f"32x32 {s_eq:.0%} (same latency) {precision}",
            one_shot_plan(model, tok, s_eq, (32, 32), args.calibration_words), q,
            kind="uniform32_same_latency", sparsity=s_eq)
    if not args.no_peers:
        mask = torch.ones_like(ids)
        calibration = quality.minilm_calibration(tok, n=256, words=args.calibration_words)
        nncf_data = [(b["input_ids"], b["attention_mask"]) for b in calibration]
        for variant in ("openvino", "openvino-int8"):
            reason = peers.available().get("openvino")
            if reason:
                print(f"{variant}: skipped ({reason})")
                continue
            peer = peers.build(variant, model, (ids, mask), args.threads,
                               calibration=nncf_data if variant.endswith("int8") else None)
            module = peers.as_torch_module(peer, ["input_ids", "attention_mask"], as_tuple=True)
            m = evaluator.evaluate(module)
            rows[variant] = {"kind": "peer", "cosine": m["cosine"],
                             "cosine_ood": m["cosine_ood"],
                             **{k: v for k, v in m.items() if k.startswith("cosine_")},
                             "wordsim353": m["wordsim353"]}
            samplers[variant] = wall_sampler(peer.timer(ids.numpy(), mask.numpy()))
    print(f"\ntiming batch 8 x 128 ({args.repeats} interleaved repeats) ...", flush=True)
    for name, t in median_interleaved(samplers, repeats=args.repeats).items():
        rows[name]["ms"] = t * 1e3
    for precision in args.precision:
        dense = rows[f"dense {precision}"]["ms"]
        for r in rows.values():
            if r.get("precision") == precision:
                r["vs_dense"] = r["ms"] / dense
    print(f"\n{'row':<38} {'ms':>7} {'x dense':>8} {'cos in':>7} {'cos ood':>8} {'WordSim':>8}")
    for name, r in rows.items():
        print(f"{name:<38} {r['ms']:7.1f} {r.get('vs_dense', float('nan')):8.2f} "
              f"{r['cosine']:7.3f} {r['cosine_ood']:8.3f} {r['wordsim353']:8.3f}")
    out = {"machine": platform.machine(), "cpu": cpu_name(), "threads": args.threads,
           "batch": 8, "seq": 128, "repeats": args.repeats, "latency": args.latency,
           "calibration": {"sentences": 256, "words": args.calibration_words}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
