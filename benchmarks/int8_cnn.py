"""int8 convs: the MNIST CNN (three 3x3 convs, two Linear layers) against the runtimes a user
already has, at every precision, each row with its held-out accuracy and its speed.

Rows: torch eager; ONNX Runtime float32 and int8 (``quantize_dynamic``); OpenVINO float32,
its default precision and int8 (NNCF post-training quantization on the calibration images);
ours dense and block-sparse (8x8 blocks, one-shot plans from ``calibration=``, the same plan
for float32 and int8) in float32 and int8 (dynamic activations: each image of a conv's input
quantized as one row, each row of a Linear's).

Quality: top-1 accuracy on the 1000 held-out images of ``quality.mnist_split`` (no step saw
them; calibration draws from the other 4000); ours is the compiled build itself (run at its
compiled batch, the last batch padded). Speed: batch 1 and 64, 2 threads, interleaved in one
process, median.

    python benchmarks/int8_cnn.py                 # ~5 min on 2 cores
    python benchmarks/int8_cnn.py --quick         # batch 64, fewer repeats, no peers
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

import tetris_tvm  # noqa: E402
from tetris_tvm import peers, quality, zoo  # noqa: E402
from tetris_tvm.bench import cpu_name, median_interleaved, wall_sampler  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BLOCK = 8


class AtBatch(torch.nn.Module):
    """A build compiled for ``batch`` images behind a torch module that takes any number (the
    last group padded with zeros, its extra outputs dropped)."""

    def __init__(self, run: Any, batch: int) -> None:
        super().__init__()
        self.run, self.batch = run, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), self.batch):
            part = x[i:i + self.batch]
            rows = len(part)
            if rows < self.batch:
                part = torch.cat([part, part.new_zeros((self.batch - rows, *part.shape[1:]))])
            out.append(torch.as_tensor(np.asarray(self.run(part)))[:rows])
        return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--repeats", type=int, default=15, help="interleaved repeats (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="batch 64, 5 repeats, no peers")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "int8_mnist_cnn.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.no_peers = [64], 5, True
    torch.set_num_threads(args.threads)
    model = zoo.load_mnist_cnn()
    _, (held_x, held_y) = quality.mnist_split()
    calibration = quality.mnist_calibration()
    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, accuracy: float, **extra: Any) -> None:
        rows[name] = {"accuracy": accuracy, "ms": {}, **extra}
        print(f"{name:<28} held-out accuracy {accuracy:.4f}", flush=True)

    record("torch eager (float32)", quality.classifier_accuracy(model, held_x, held_y))
    example = torch.from_numpy(held_x[:args.batch[0]])
    plans = {}
    for s in args.sparsity:
        start = time.perf_counter()
        plans[s] = tetris_tvm.compile(model, (example,), sparsity=s, block_size=BLOCK,
                                      calibration=calibration, progress=False).plan
        print(f"plan {s:.0%}: {time.perf_counter() - start:.0f} s", flush=True)
    builds: list[tuple[str, dict[str, Any]]] = [
        ("ours dense float32", {"sparsity": 0.0}),
        ("ours dense int8", {"sparsity": 0.0, "quantize": "int8"}),
    ]
    for s in args.sparsity:
        builds += [(f"ours {s:.0%} float32", {"plan": plans[s]}),
                   (f"ours {s:.0%} int8", {"plan": plans[s], "quantize": "int8"})]
    compiled: dict[tuple[str, int], Any] = {}
    for name, options in builds:
        for batch in args.batch:
            x = torch.from_numpy(held_x[:batch])
            compiled[(name, batch)] = cm = tetris_tvm.compile(
                model, (x,), block_size=None if "plan" in options else BLOCK, progress=False,
                **options)
        big = max(args.batch)
        record(name, quality.classifier_accuracy(AtBatch(compiled[(name, big)], big),
                                                 held_x, held_y),
               weights_kept=cm.report.totals["weights_kept_fraction"],
               precision={r["name"]: r["precision"] for r in cm.report.layers},
               dot=cm.plan.quantization.get("dot"))
    peer_models: dict[str, Any] = {}
    if not args.no_peers:
        found = peers.available()
        images = torch.cat(list(calibration))  # NNCF feeds the exported (static) batch
        nncf_data = [(images[i:i + len(example)],)
                     for i in range(0, len(images) - len(example) + 1, len(example))]
        for variant in peers.VARIANTS:
            reason = found.get(variant.split("-")[0])
            if reason:
                print(f"{variant}: skipped ({reason})")
                continue
            peer = peers.build(variant, model, (example,), args.threads,
                               calibration=nncf_data if variant.endswith("int8") else None)
            peer_models[variant] = peer
            record(variant, quality.classifier_accuracy(
                AtBatch(lambda part, peer=peer: peers.first_output(peer(part.numpy())),
                        args.batch[0]), held_x, held_y), **({"note": peer.note} if peer.note
                                                           else {}))
    for batch in args.batch:
        x = torch.from_numpy(held_x[:batch])
        samplers = {}
        with torch.no_grad():
            samplers["torch eager (float32)"] = wall_sampler(lambda x=x: model(x))
        for variant, peer in peer_models.items():
            samplers[variant] = wall_sampler(peer.timer(x.numpy()))
        for name, _ in builds:
            cm = compiled[(name, batch)]
            cm._ensure_vm()
            arrays = [np.ascontiguousarray(x.numpy())]
            samplers[name] = wall_sampler(lambda cm=cm, a=arrays: cm.run_numpy(*a))
        print(f"\ntiming batch {batch} ({args.repeats} interleaved repeats) ...", flush=True)
        for name, t in median_interleaved(samplers, repeats=args.repeats).items():
            rows[name]["ms"][str(batch)] = t * 1e3
    _print_table(rows, args.batch)
    out = {"machine": platform.processor() or platform.machine(), "cpu": cpu_name(),
           "threads": args.threads, "repeats": args.repeats, "block": [BLOCK, BLOCK],
           "plan_recipe": "one-shot (calibration=, 1000 training images)",
           "heldout_images": int(len(held_y)), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwritten {args.out}")
    return 0


def _print_table(rows: dict[str, dict[str, Any]], batches: list[int]) -> None:
    peers_ms = {k: rows.get(k, {}).get("ms", {}) for k in ("openvino", "openvino-int8")}
    print(f"\n{'runtime':<28} " + " ".join(f"{'b' + str(b) + ' ms':>9}" for b in batches)
          + "  vs OV f32  vs OV int8  accuracy")
    for name, r in rows.items():
        ms = r["ms"]
        b = str(batches[0])
        ratios = [f"{peers_ms[k][b] / ms[b]:>9.2f}x" if b in peers_ms[k] and b in ms
                  else f"{'':>10}" for k in ("openvino", "openvino-int8")]
        print(f"{name:<28} " + " ".join(f"{ms.get(str(bb), float('nan')):>9.3f}"
                                         for bb in batches)
              + f" {ratios[0]} {ratios[1]}  {r['accuracy']:.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
