"""Does timing a peer runtime in the same process slow our builds? A check of the benchmark
method: MiniLM (batch 8 x 128) dense int8 and the one-shot 75% int8 plan, timed interleaved
alone, then with OpenVINO int8 (NNCF) built, then timed between them, then with ONNX Runtime
int8 as well; median of the repeats at each step.

    python benchmarks/peer_interference.py      # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from minilm_plans import SKIP, one_shot_plan  # noqa: E402  (benchmarks/, beside this script)

import tetris_tvm  # noqa: E402
from tetris_tvm import peers, quality, zoo  # noqa: E402
from tetris_tvm.bench import cpu_name, median_interleaved, wall_sampler  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--out", default=str(RESULTS / "peer_interference.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, tok = zoo.load_minilm()
    x = zoo.minilm_inputs(tok, 8, 128)
    mask = torch.ones_like(x)
    data = [np.ascontiguousarray(x.numpy())]
    builds = {
        "ours dense int8": tetris_tvm.compile(model, (x,), sparsity=0.0, block_size=32,
                                              overrides=SKIP, quantize="int8", progress=False),
        "ours 75% int8": tetris_tvm.compile(model, (x,), quantize="int8", progress=False,
                                            plan=one_shot_plan(model, tok, 0.75, words=256)),
    }
    samplers = {}
    for name, cm in builds.items():
        cm._ensure_vm()
        samplers[name] = wall_sampler(lambda cm=cm: cm.run_numpy(*data))
    steps = {}

    def step(label: str) -> None:
        times = median_interleaved(samplers, repeats=args.repeats)
        steps[label] = {k: v * 1e3 for k, v in times.items()}
        print(label, {k: round(v, 1) for k, v in steps[label].items()}, flush=True)

    step("ours alone")
    calibration = quality.minilm_calibration(tok, n=256, words=256)
    ov = peers.build("openvino-int8", model, (x, mask), 2,
                     calibration=[(b["input_ids"], b["attention_mask"]) for b in calibration])
    step("OpenVINO int8 built, not timed")
    samplers["openvino-int8"] = wall_sampler(ov.timer(x.numpy(), mask.numpy()))
    step("OpenVINO int8 interleaved")
    ort = peers.build("onnxruntime-int8", model, (x, mask), 2)
    samplers["onnxruntime-int8"] = wall_sampler(ort.timer(x.numpy(), mask.numpy()))
    step("OpenVINO and ONNX Runtime int8 interleaved")
    Path(args.out).write_text(json.dumps({"cpu": cpu_name(), "threads": 2,
                                          "repeats": args.repeats, "steps": steps}, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
