"""CPU schedule choices against the alternatives they replaced, per kernel.

Three tables, each timed interleaved in one process (median of repeats, 2 threads):

- depthwise 3x3 convs with their folded batch norm + ReLU6 (every distinct MobileNetV2 shape
  at batch 1): the ``GroupedConv2d`` rule, the same rule without the deinterleaved plane for
  stride 2, and the generic ``Fallback`` rule that scheduled them before;
- dense 1x1 convs (``dense_conv2d``): the register-tile rule table's choice against the
  8 x 32 tile it picked on AVX-512 before the tile had to stay below TVM's stack-alloca limit;
- MiniLM's dense linears (``dense_linear``, with bias and GELU): the weight packed in 32-wide
  output panels (what CPU builds use) against 16-wide ones.

    python benchmarks/cpu_schedules.py --json benchmarks/results/cpu_schedules.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from tvm import s_tir  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

from tetris_tvm.bench import median_interleaved, tvm_sampler  # noqa: E402
from tetris_tvm.compiler import lower_model  # noqa: E402
from tetris_tvm.kernels import compute as K  # noqa: E402
from tetris_tvm.schedules.cpu.conv2d import conv_tile, schedule_conv2d  # noqa: E402
from tetris_tvm.schedules.cpu.fallback import Fallback  # noqa: E402
from tetris_tvm.schedules.cpu.grouped_conv import GroupedConv2d  # noqa: E402
from tetris_tvm.schedules.pipeline import expand_marks, schedule_module  # noqa: E402
from tetris_tvm.schedules.targets import default_target  # noqa: E402

DEPTHWISE = [  # (channels, input side, stride) of MobileNetV2 at 224x224
    (32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
    (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1),
]
POINTWISE = [  # (batch, cin, cout, side)
    (1, 32, 192, 112), (1, 24, 144, 56), (1, 144, 24, 56), (1, 96, 576, 14), (1, 576, 96, 14),
    (1, 320, 1280, 7), (8, 144, 24, 56), (8, 96, 576, 14),
]


def _timer(mod: tvm.IRModule, args: list[np.ndarray], number: int):
    target = default_target()
    lib = tvm.compile(expand_marks(mod), target=target)
    return tvm_sampler(lib.mod, args, tvm.cpu(), number)


def _scheduled(sch: s_tir.Schedule | None) -> tvm.IRModule:
    if sch is None:
        raise RuntimeError("the rule declined the kernel")
    return tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})


def depthwise_rows(repeats: int) -> list[dict]:
    rows, target = [], default_target()
    for c, side, stride in DEPTHWISE:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False),
                                torch.nn.BatchNorm2d(c), torch.nn.ReLU6()).eval()
        x = torch.randn(1, c, side, side)
        low = lower_model(m, (x,), sparsity=0.0, progress=False)
        (func,) = [f for gv, f in low.mod.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]
        rng = np.random.default_rng(0)
        args = [rng.standard_normal([int(d) for d in info.as_json()[2]]).astype("float32")
                for info in ms.arg_info.ArgInfo.from_prim_func(func)]
        variants = {"grouped_conv": GroupedConv2d(), "fallback": Fallback()}
        if stride == 2:
            variants["grouped_conv_strided"] = GroupedConv2d(deinterleave=False)
        timers, outs = {}, {}
        for name, rule in variants.items():
            mod = _scheduled(rule.apply(func, target, False))
            timers[name] = _timer(mod, args, 20)
            lib = tvm.compile(expand_marks(mod), target=target)
            tensors = [tvm.runtime.tensor(a) for a in args]
            lib["main"](*tensors)
            outs[name] = tensors[-1].numpy()
        err = max(float(np.abs(o - outs["fallback"]).max()) for o in outs.values())
        t = median_interleaved(timers, repeats)
        row = {"channels": c, "side": side, "stride": stride, "max_abs_diff": err,
               **{f"ms_{k}": v * 1e3 for k, v in t.items()}}
        rows.append(row)
        print(f"depthwise {c}x{side} s{stride}: "
              + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in t.items()), flush=True)
    return rows


def pointwise_rows(repeats: int) -> list[dict]:
    rows, target = [], default_target()
    rng = np.random.default_rng(0)
    for n, cin, cout, side in POINTWISE:
        w = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
        x = rng.standard_normal((n, cin, side, side)).astype(np.float32)
        func = K.dense_conv2d(x.shape, w.shape, block_n=16)
        default = conv_tile(16, side * side, target)
        tiles = {"rule_table": default, "8x32": (8, 32)}
        args = [x, K.pack_dense_weight(w.reshape(cout, -1), 16),
                np.zeros((n, cout, side, side), np.float32)]
        timers = {}
        for name, tile in tiles.items():
            sch = s_tir.Schedule(func)
            schedule_conv2d(sch, target, tile)
            timers[name] = _timer(sch.mod, args, 20)
        t = median_interleaved(timers, repeats)
        rows.append({"batch": n, "cin": cin, "cout": cout, "side": side,
                     "rule_table_tile": list(default), **{f"ms_{k}": v * 1e3
                                                          for k, v in t.items()}})
        print(f"pointwise {n}x{cin}->{cout}@{side}: tile {default} "
              + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in t.items()), flush=True)
    return rows


LINEAR = [((8, 128, 384), 1536), ((8, 128, 1536), 384), ((8, 128, 384), 384),
          ((1, 128, 384), 1536)]  # (x shape, N): MiniLM's FFN up / down and projections


def linear_rows(repeats: int) -> list[dict]:
    rows, target = [], default_target()
    rng = np.random.default_rng(0)
    for x_shape, n in LINEAR:
        k = x_shape[-1]
        w = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal(x_shape).astype(np.float32)
        timers = {}
        for panel in (32, 16):
            func = K.dense_linear(x_shape, n, block_n=panel, bias=True, activation="gelu")
            mod = schedule_module(tvm.IRModule({"main": func}), target)
            args = [x, K.pack_dense_weight(w, panel), np.zeros(n, np.float32),
                    np.zeros((*x_shape[:-1], n), np.float32)]
            timers[f"panel_{panel}"] = _timer(mod, args, 10)
        t = median_interleaved(timers, repeats)
        m = int(np.prod(x_shape[:-1]))
        rows.append({"x_shape": list(x_shape), "n": n, "gflops": 2 * m * k * n / 1e9,
                     **{f"ms_{k_}": v * 1e3 for k_, v in t.items()}})
        print(f"linear {x_shape} -> {n}: "
              + ", ".join(f"{k_} {v * 1e3:.3f} ms" for k_, v in t.items()), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = {"meta": {"machine": platform.machine(), "processor": platform.processor(),
                       "threads": 2, "target": str(default_target())},
              "depthwise": depthwise_rows(args.repeats),
              "pointwise": pointwise_rows(args.repeats),
              "linear": linear_rows(args.repeats)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
