"""The quality x latency frontier of block-pruned MiniLM: block shapes x sparsities, float32 and
int8, against the dense runtimes a user already has.

Every point is one plan made one-shot (the default recipe of ``calibration=``: activation-aware
TETRIS, sensitivity allocation, reconstruction checked on held-back calibration sentences; 256
calibration sentences and 256 single vocabulary words, ``--calibration-words``, the same set
for NNCF; plans cached in benchmarks/cache/), measured twice:

- quality on held-out text no step saw (``lee.cor`` in-domain; conversation and technical
  prose out of domain): mean cosine of mean-pooled embeddings to the dense float32 model's,
  and WordSim353, of the plan's reference (the masked model; for int8, the same model with
  the build's fake quantization: what the build computes);
- speed: the compiled model at batch 8 x 128 tokens, 2 threads, interleaved in one process
  with our dense float32 and int8 builds and the peers (OpenVINO float32 and NNCF int8,
  ONNX Runtime float32 and int8), median of the repeats.

Block shapes are (rows, cols) = (outputs, inputs) of each weight. Writes JSON and a PNG
(out-of-domain cosine against milliseconds, the peers as reference points).

    python benchmarks/frontier.py                                   # 50%, 5 shapes, ~40 min
    python benchmarks/frontier.py --sparsity 0.5 0.75 --blocks 32x32 16x16
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
PEERS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")


def block_arg(text: str) -> tuple[int, int]:
    rows, _, cols = text.partition("x")
    return int(rows), int(cols or rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5])
    ap.add_argument("--blocks", type=block_arg, nargs="+",
                    default=[(32, 32), (16, 16), (32, 4), (32, 1), (8, 8)],
                    help="block shapes, rows x cols (outputs x inputs)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=11, help="interleaved repeats (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--calibration-words", type=int, default=256, metavar="N",
                    help="single vocabulary words after the 256 calibration sentences (ours "
                    "and NNCF's calibration set)")
    ap.add_argument("--out", default=str(RESULTS / "frontier_minilm.json"))
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw the PNG from the JSON at --out, measure nothing")
    args = ap.parse_args(argv)
    if args.plot_only:
        saved = json.loads(Path(args.out).read_text())
        _plot(saved["rows"], Path(args.out).with_suffix(".png"), saved["batch"])
        return 0
    torch.set_num_threads(args.threads)
    model, tok = zoo.load_minilm()
    evaluator = quality.EncoderEvaluator(model, tok)
    ids = zoo.minilm_inputs(tok, args.batch, 128)
    rows: dict[str, dict[str, Any]] = {}
    samplers: dict[str, Any] = {}

    def record(name: str, metrics: dict[str, float], **extra: Any) -> None:
        rows[name] = {"cosine": metrics["cosine"], "cosine_ood": metrics.get("cosine_ood"),
                      **{k: v for k, v in metrics.items() if k.startswith("cosine_")},
                      "wordsim353": metrics["wordsim353"], **extra}
        print(f"{name:<28} cosine {metrics['cosine']:.3f}  out of domain "
              f"{metrics.get('cosine_ood', float('nan')):.3f}  WordSim353 "
              f"{metrics['wordsim353']:.3f}", flush=True)

    def add_build(name: str, **options: Any) -> Any:
        cm = tetris_tvm.compile(model, (ids,), progress=False, **options)
        cm._ensure_vm()
        data = [np.ascontiguousarray(ids.numpy())]
        samplers[name] = wall_sampler(lambda cm=cm, a=data: cm.run_numpy(*a))
        return cm

    record("torch eager (float32)", evaluator.dense, kind="dense")
    for q in (None, "int8"):
        label = f"ours dense {q or 'float32'}"
        cm = add_build(label, sparsity=0.0, block_size=32, overrides=SKIP, quantize=q)
        record(label, evaluator.evaluate(quantized_reference(model, cm.plan)), kind="ours",
               sparsity=0.0, block=None, precision=q or "float32")
    for s in args.sparsity:
        for block in args.blocks:
            start = time.perf_counter()
            plan = one_shot_plan(model, tok, s, block, words=args.calibration_words)
            print(f"plan {s:.0%} {block[0]}x{block[1]}: {time.perf_counter() - start:.0f} s",
                  flush=True)
            for q in (None, "int8"):
                label = f"ours {s:.0%} {block[0]}x{block[1]} {q or 'float32'}"
                cm = add_build(label, plan=plan, quantize=q)
                kernels = sorted({r["kernel"] for r in cm.report.layers})
                record(label, evaluator.evaluate(quantized_reference(model, cm.plan)),
                       kind="ours", sparsity=s, block=list(block), precision=q or "float32",
                       kernels=kernels,
                       weights_kept=cm.report.totals["weights_kept_fraction"])
    if not args.no_peers:
        found = peers.available()
        mask = torch.ones_like(ids)
        calibration = quality.minilm_calibration(tok, n=256, words=args.calibration_words)
        nncf_data = [(b["input_ids"], b["attention_mask"]) for b in calibration]
        for variant in PEERS:
            reason = found.get(variant.split("-")[0])
            if reason:
                print(f"{variant}: skipped ({reason})")
                continue
            try:
                peer = peers.build(variant, model, (ids, mask), args.threads,
                                   calibration=nncf_data if variant.endswith("int8") else None)
            except Exception as exc:  # noqa: BLE001 - a peer that cannot build is reported
                print(f"{variant}: skipped ({type(exc).__name__}: {exc})")
                continue
            module = peers.as_torch_module(peer, ["input_ids", "attention_mask"], as_tuple=True)
            record(variant, evaluator.evaluate(module), kind="peer")
            samplers[variant] = wall_sampler(peer.timer(ids.numpy(), mask.numpy()))
    print(f"\ntiming batch {args.batch} x 128 ({args.repeats} interleaved repeats) ...",
          flush=True)
    times = median_interleaved(samplers, repeats=args.repeats)
    for name, t in times.items():
        rows[name]["ms"] = t * 1e3
    _table(rows)
    out = {"machine": platform.machine(), "cpu": cpu_name(), "threads": args.threads,
           "batch": args.batch, "seq": 128, "repeats": args.repeats,
           "calibration": {"sentences": 256, "words": args.calibration_words}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    _plot(rows, Path(args.out).with_suffix(".png"), args.batch)
    print(f"\nwritten {args.out}")
    return 0


def _table(rows: dict[str, dict[str, Any]]) -> None:
    fastest_int8 = min((r["ms"] for n, r in rows.items()
                        if r.get("kind") == "peer" and n.endswith("int8") and "ms" in r),
                       default=None)
    print(f"\n{'row':<30} {'ms':>8} {'vs best int8 peer':>17} {'cos in':>7} {'cos ood':>8} "
          f"{'WordSim':>8}")
    for name, r in sorted(rows.items(), key=lambda kv: kv[1].get("ms", 1e9)):
        ms = r.get("ms")
        ratio = f"{fastest_int8 / ms:.2f}x" if ms and fastest_int8 else "-"
        ood = r.get("cosine_ood")
        print(f"{name:<30} {ms if ms else float('nan'):8.1f} {ratio:>17} {r['cosine']:7.3f} "
              f"{ood if ood is not None else float('nan'):8.3f} {r['wordsim353']:8.3f}")


def _plot(rows: dict[str, dict[str, Any]], path: Path, batch: int) -> None:
    """Out-of-domain cosine against milliseconds: our points coloured by block shape (circles
    float32, triangles int8, filled at 50%, hollow at 75%), the dense runtimes labelled."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 5.5))
    shapes = sorted({tuple(r["block"]) for r in rows.values() if r.get("block")})
    colors = dict(zip(shapes, plt.get_cmap("tab10").colors, strict=False))
    for name, r in rows.items():
        if "ms" not in r or r.get("cosine_ood") is None:
            continue
        if r.get("block") is None:  # dense: ours and the peers
            ax.scatter(r["ms"], r["cosine_ood"], marker="s", color="tab:gray")
            ours = name.startswith("ours")  # ours above the point, the peers below it
            ax.annotate(name, (r["ms"], r["cosine_ood"]), fontsize=7,
                        xytext=(4, 6 if ours else -12), textcoords="offset points")
            continue
        color = colors[tuple(r["block"])]
        filled = r.get("sparsity", 0) <= 0.5
        ax.scatter(r["ms"], r["cosine_ood"], s=40,
                   marker="o" if r.get("precision") == "float32" else "^",
                   facecolors=color if filled else "none", edgecolors=color)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f"{b[0]}x{b[1]}")
               for b, c in colors.items()]
    handles += [plt.Line2D([], [], marker="o", ls="", color="k", mfc="none", label="float32"),
                plt.Line2D([], [], marker="^", ls="", color="k", mfc="none", label="int8"),
                plt.Line2D([], [], marker="o", ls="", color="k", label="50% (filled)"),
                plt.Line2D([], [], marker="o", ls="", color="k", mfc="none",
                           label="75% (hollow)")]
    ax.legend(handles=handles, fontsize=8, loc="center right")
    ax.set_xlabel(f"ms per batch of {batch} x 128 tokens (2 threads)")
    ax.set_ylabel("held-out cosine to dense embeddings, out of domain")
    ax.set_title("MiniLM: one-shot block pruning by block shape vs dense runtimes (gray)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
