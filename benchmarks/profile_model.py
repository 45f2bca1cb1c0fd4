"""Where a compiled model's time goes: per-kernel time, grouped by kind.

    python benchmarks/profile_model.py --model mobilenet --batch 1 --sparsity 0 0.5 \
        > benchmarks/results/profile_mobilenet.txt
    python benchmarks/profile_model.py --model minilm --batch 8 --sparsity 0 0.75 \
        > benchmarks/results/profile_minilm.txt

Prints, per sparsity, the total kernel time of one run (wall clock around every VM call,
``tetris_tvm.profiling``), the time per kernel kind (``bsr_conv2d``, ``fused`` batch norm +
activation ops, depthwise ``conv2d``...) and the six slowest kernels with their calls per run.
Shares are what to read: absolute times move with the machine's load.
"""

from __future__ import annotations

import argparse

import torch
import tvm

import tetris_tvm
from tetris_tvm.profiling import profile_kernels
from tetris_tvm.zoo import load_minilm, load_mnist_cnn, minilm_inputs, mnist_data, mobilenet_v2


def kind_of(kernel: str) -> str:
    parts = kernel.split("_")
    if kernel.startswith(("bsr", "ell", "dense", "quantize")):
        return "_".join(parts[:2])
    if kernel.startswith("int8"):
        return "_".join(parts[:3])
    return parts[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=["mobilenet", "minilm", "mnist-cnn"], default="mobilenet")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--block", type=int, default=None,
                    help="block side (default: 16 for mobilenet, 32 for minilm, 8 for mnist-cnn)")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--quantize", choices=["int8"], default=None,
                    help="profile int8 builds (dynamic activations)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.model == "minilm":
        model, tok = load_minilm()
        x = minilm_inputs(tok, args.batch, 128)
        block = args.block or 32
    elif args.model == "mnist-cnn":
        model, x = load_mnist_cnn(), torch.from_numpy(mnist_data()[0][:args.batch])
        block = args.block or 8
    else:
        model, x = mobilenet_v2(), torch.randn(args.batch, 3, 224, 224)
        block = args.block or 16
    for s in args.sparsity:
        cm = tetris_tvm.compile(model, (x,), sparsity=s, block_size=(block, block),
                                quantize=args.quantize, progress=False)
        cm._ensure_vm()
        rows = profile_kernels(cm.vm, [tvm.runtime.tensor(x.numpy())], runs=3)
        total = sum(r[1] for r in rows)
        print(f"s {s} total ms {total * 1e3:.2f}")
        kinds: dict[str, float] = {}
        for kernel, seconds, _ in rows:
            kinds[kind_of(kernel)] = kinds.get(kind_of(kernel), 0.0) + seconds
        for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1])[:8]:
            print(f"   {kind} {seconds * 1e3:.2f} ms ({seconds / total:.0%})")
        for kernel, seconds, calls in rows[:6]:
            print(f"      {kernel} {seconds * 1e3:.3f} ms, {calls} calls")


if __name__ == "__main__":
    main()
