"""The ``tetris-tvm`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser"]


def _block(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        msg = f"block must look like 32 or 32x16, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"block must look like 32 or 32x16, got {text!r}")


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {value}")
    return value


def load_user_model(spec: str) -> Any:
    """A zoo name (``minilm``, ``mnist-cnn``) or ``package.module:factory`` returning a module."""
    from . import zoo

    if spec in zoo.MODELS:
        return zoo.load_model(spec)
    if ":" not in spec:
        raise SystemExit(
            f"error: model {spec!r} is neither one of {', '.join(zoo.MODELS)} "
            "nor 'module:factory'"
        )
    module_name, factory = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"error: cannot import {module_name!r}: {e}") from e
    if not hasattr(module, factory):
        raise SystemExit(f"error: {module_name!r} has no attribute {factory!r}")
    return getattr(module, factory)()


def _cmd_prune(args: argparse.Namespace) -> int:
    from .plan import prune

    model = load_user_model(args.model)
    start = time.perf_counter()
    plan = prune(
        model,
        sparsity=args.sparsity,
        block_size=args.block,
        reorder=not args.no_reorder,
        solver=args.solver,
        balanced=args.balanced,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    print(plan.format_table())
    layers = plan.summary()
    if layers:
        mean = sum(r["retained_l1"] for r in layers) / len(layers)
        print(f"\n{len(layers)} layers pruned in {elapsed:.1f} s; mean retained L1 {mean:.4f}")
    if args.out:
        plan.save(args.out)
        print(f"plan written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tetris-tvm",
        description="TETRIS reorder-and-block-prune for PyTorch models, compiled with TVM.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prune",
        help="plan the pruning of a model and print the per-layer table",
        description="Reorder and block-prune every Linear/Conv2d layer of a model; print the "
        "retained L1 per layer and optionally save the plan (.npz).",
    )
    p.add_argument(
        "--model",
        default="minilm",
        help="zoo model (minilm, mnist-cnn) or 'package.module:factory' (default: minilm)",
    )
    p.add_argument("--sparsity", type=_sparsity, default=0.75, help="fraction of blocks pruned")
    p.add_argument("--block", type=_block, default=(32, 32), help="block, e.g. 32 or 16x32")
    p.add_argument("--solver", choices=("assign", "swap"), default="assign", help="M-step solver")
    p.add_argument("--balanced", action="store_true", help="same blocks kept in every block-row")
    p.add_argument("--no-reorder", action="store_true", help="plain block pruning (no TETRIS)")
    p.add_argument("--out", help="write the plan to this .npz file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tetris-tvm`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
