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


def _example_inputs(args: argparse.Namespace, model: Any) -> tuple[Any, ...]:
    """Inputs to compile for: zoo defaults, --input-shape, or an ExportedProgram's own."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        inputs = getattr(model, "example_inputs", None)
        if inputs is None:
            raise SystemExit("error: the .pt2 file has no example inputs; pass --input-shape")
        return tuple(inputs[0])
    if args.input_shape:
        return tuple(torch.randn(*shape) for shape in args.input_shape)
    if args.model == "minilm":
        from .zoo import load_minilm, minilm_inputs

        return (minilm_inputs(load_minilm()[1], args.batch, args.seq),)
    if args.model == "mnist-cnn":
        from .zoo import mnist_data

        return (torch.from_numpy(mnist_data()[0][: args.batch]),)
    raise SystemExit("error: pass --input-shape (e.g. --input-shape 1,3,224,224) for this model")


def _load_any(spec: str) -> Any:
    if spec.endswith(".pt2"):
        import torch

        return torch.export.load(spec)
    return load_user_model(spec)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        msg = f"shape must look like 1,3,224,224, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile as tetris_compile
    from .plan import PruningPlan

    model = _load_any(args.model)
    inputs = _example_inputs(args, model)
    plan = PruningPlan.load(args.plan) if args.plan else None
    print(f"compiling {args.model} for {args.target} (sparsity {args.sparsity}) ...", flush=True)
    start = time.perf_counter()
    cm = tetris_compile(
        model, inputs, target=_target_arg(args.target), sparsity=args.sparsity,
        block_size=args.block, plan=plan, tuning=args.tuning,
        tuning_fallback=args.tuning_fallback, dtype=args.dtype,
        dynamic_batch=args.dynamic_batch, streams=args.streams,
    )
    print(f"compiled in {time.perf_counter() - start:.1f} s\n")
    print(cm.report.format_table())
    if args.out:
        path = cm.export(args.out, cross_compiler=args.cross_compiler)
        print(f"\nwritten {path} (+ {path.name}.tetris.json)")
    if args.save_plan:
        cm.plan.save(args.save_plan)
        print(f"plan written to {args.save_plan}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .plan import PruningPlan
    from .tuning import tune

    model = _load_any(args.model)
    inputs = _example_inputs(args, model)
    plan = PruningPlan.load(args.plan) if args.plan else None
    print(f"tuning {args.model} for {args.target} (sparsity {args.sparsity}, {args.trials} "
          f"trials per task) into {args.work_dir} ...", flush=True)
    result = tune(
        model, inputs, target=_target_arg(args.target), work_dir=args.work_dir,
        trials=args.trials, sparsity=args.sparsity, block_size=args.block, plan=plan,
        max_trials_global=args.max_trials, rpc=args.rpc, timeout=args.timeout,
        progress=not args.quiet, cross_compiler=args.cross_compiler, streams=args.streams,
    )
    print()
    print(result.format_table())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1, default=str))
    print(f"\nrecords in {result.path}; compile with --tuning {args.work_dir} and the same "
          "--sparsity/--block/--plan/--streams")
    return 0


def _target_arg(text: str) -> Any:
    import json

    if text.strip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: --target is not valid JSON: {e}") from e
    return text


def _cmd_report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    path = Path(args.path)
    if path.suffix == ".npz":
        from .plan import PruningPlan

        print(PruningPlan.load(path).format_table())
        return 0
    meta_path = Path(str(path) + ".tetris.json") if path.suffix == ".so" else path
    if not meta_path.exists():
        raise SystemExit(f"error: {meta_path} not found (export writes it beside the .so)")
    from .compiler import Report

    meta = json.loads(meta_path.read_text())
    rep = meta.get("report", {})
    report = Report(layers=rep.get("layers", []), skipped=rep.get("skipped", []),
                    runtime_gathers=rep.get("totals", {}).get("runtime_gathers", 0),
                    streams=rep.get("streams", []))
    print(f"target: {meta.get('target')}\ninputs: {', '.join(meta.get('input_names', []))}\n")
    print(report.format_table())
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numpy as np
    import torch

    from .bench import embedding_quality, mean_pool, time_interleaved
    from .compiler import compile as tetris_compile

    torch.set_num_threads(args.threads)
    model = _load_any(args.model)
    inputs = _example_inputs(args, model)
    is_minilm = args.model == "minilm"

    def torch_out() -> np.ndarray:
        with torch.no_grad():
            out = model(*inputs)
        out = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
        out = out[0] if isinstance(out, tuple) else out
        return out.numpy()

    dense = torch_out()
    rows = []
    fns: dict[str, Any] = {"torch eager (dense)": torch_out}
    for s in args.sparsity:
        print(f"compiling at sparsity {s} ...", flush=True)
        cm = tetris_compile(model, inputs, target=_target_arg(args.target), sparsity=s,
                            block_size=args.block, streams=args.streams)
        out = cm(*inputs)
        out = (out[0] if isinstance(out, tuple) else out).numpy()
        if is_minilm:
            ids = inputs[0].numpy()
            q = embedding_quality(mean_pool(dense, ids), mean_pool(out, ids))
            quality = f"cosine {q['cosine']:.4f}, pair order {q['pair_order']:.3f}"
        else:
            rel = float(np.abs(out - dense).max() / max(np.abs(dense).max(), 1e-12))
            quality = f"max rel. diff to dense {rel:.3g}"
        rows.append((s, quality, cm.report.totals["weights_kept_fraction"]))
        for st in cm.report.streams:
            print(f"  stream of {st['channels']} channels ({len(st['layers'])} layers): "
                  f"{st['choice']}" + (f" ({st['reason']})" if st["reason"] else ""))
        cm._ensure_vm()
        tvm_args = [np.ascontiguousarray(x.numpy()) for x in inputs]
        fns[f"tetris-tvm s={s}"] = lambda cm=cm, a=tvm_args: cm.run_numpy(*a)
    print(f"\ntiming ({args.repeats} interleaved repeats, median, {args.threads} threads) ...")
    times = time_interleaved(fns, repeats=args.repeats)
    base = times["torch eager (dense)"]
    print(f"\n{'variant':<26} {'ms':>9} {'speedup':>8}  quality vs dense")
    print(f"{'torch eager (dense)':<26} {base * 1e3:>9.1f} {1.0:>8.2f}  -")
    for s, quality, kept in rows:
        t = times[f"tetris-tvm s={s}"]
        name = f"tetris-tvm s={s}"
        print(f"{name:<26} {t * 1e3:>9.1f} {base / t:>8.2f}  {quality} (weights kept {kept:.2f})")
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

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            default="minilm",
            help="zoo model (minilm, mnist-cnn), 'package.module:factory' or an "
            "ExportedProgram saved with torch.export.save (.pt2)",
        )
        p.add_argument("--input-shape", type=_shape, action="append",
                       help="float32 input shape (repeat for several inputs), e.g. 1,3,32,32")
        p.add_argument("--batch", type=int, default=8, help="zoo models: batch size")
        p.add_argument("--seq", type=int, default=128, help="minilm: sequence length")
        p.add_argument("--target", default="llvm",
                       help="'llvm' (this CPU), 'cuda', or a JSON target dict")
        p.add_argument("--block", type=_block, default=(32, 32), help="block, e.g. 32 or 16x32")

    def pruning_args(p: argparse.ArgumentParser) -> None:
        """How compile and tune prune: a sparsity, or a saved plan (same plan -> same kernels)."""
        p.add_argument("--sparsity", type=_sparsity, default=0.75,
                       help="fraction of blocks pruned")
        p.add_argument("--plan", help="use this saved plan (.npz) instead of computing one")
        p.add_argument("--streams", choices=("auto", "shared", "separate"), default="auto",
                       help="residual streams: one permutation for all their layers when it "
                       "keeps more and needs no runtime gather (auto), also when it needs "
                       "gathers (shared), or never (separate)")

    c = sub.add_parser(
        "compile",
        help="prune and compile a model, print the report, export a .so",
        description="Prune a model with TETRIS, compile it with block-sparse kernels, print "
        "the per-layer report and optionally export a deployable shared library.",
    )
    model_args(c)
    pruning_args(c)
    c.add_argument("--tuning", help="work dir written by 'tetris-tvm tune'")
    c.add_argument("--tuning-fallback", action="store_true",
                   help="if --tuning has nothing for this target/model, warn and use the "
                   "default schedules instead of failing")
    c.add_argument("--dynamic-batch", nargs="?", type=int, const=True, default=False,
                   metavar="MAX", help="compile the batch dimension as symbolic: one build "
                   "runs any batch size (MAX bounds it, so memory is planned once)")
    c.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights and operands of the block-sparse linear and conv layers (float32 "
                   "accumulation; everything else stays float32); half types suit CUDA")
    c.add_argument("--out", help="export the compiled model to this .so")
    c.add_argument("--cross-compiler", help="e.g. aarch64-linux-gnu-gcc (with a matching --target)")
    c.add_argument("--save-plan", help="write the plan used to this .npz")
    c.set_defaults(func=_cmd_compile)

    t = sub.add_parser(
        "tune",
        help="auto-tune every kernel of a model with MetaSchedule (XGBoost cost model)",
        description="Prune and lower a model as 'compile' does, then tune all its kernels "
        "(block-sparse and dense) in one MetaSchedule run with the XGBoost cost model. The "
        "fastest records of each kernel are checked against the unscheduled kernel and kept "
        "only if they beat the default schedule. Records persist in --work-dir (one folder "
        "per target); rerunning resumes, Ctrl-C keeps the records committed so far.",
    )
    model_args(t)
    pruning_args(t)
    t.add_argument("--work-dir", required=True, help="where the tuning records live")
    t.add_argument("--trials", type=int, default=64, help="measured candidates per kernel")
    t.add_argument("--max-trials", type=int, help="cap on the trials of this run")
    t.add_argument("--rpc", help="measure on an RPC tracker's device: host:port/key")
    t.add_argument("--cross-compiler",
                   help="link candidates for an --rpc device of another architecture, e.g. "
                   "aarch64-linux-gnu-g++ (with a matching --target)")
    t.add_argument("--timeout", type=int, default=30, help="seconds per build or run")
    t.add_argument("--json", help="also write the per-kernel results to this JSON file")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_tune)

    b = sub.add_parser(
        "bench",
        help="compare latency and quality against dense torch",
        description="Compile the model at each sparsity and time it against torch eager "
        "(dense) in one process, interleaved, median of repeats; print quality kept "
        "(MiniLM: cosine of sentence embeddings and pair-order agreement).",
    )
    model_args(b)
    b.add_argument("--sparsity", type=_sparsity, nargs="+", default=[0.0, 0.5, 0.75],
                   help="sparsities to compile (0 = dense through the same path)")
    b.add_argument("--repeats", type=int, default=7, help="interleaved repeats")
    b.add_argument("--threads", type=int, default=2, help="torch threads")
    b.add_argument("--streams", choices=("auto", "shared", "separate"), default="auto",
                   help="residual-stream permutations, as for compile")
    b.set_defaults(func=_cmd_bench)

    r = sub.add_parser(
        "report",
        help="print the report of an exported model (.so) or a saved plan (.npz)",
        description="Print the per-layer table of an exported model or a saved plan.",
    )
    r.add_argument("path", help="model.so (reads model.so.tetris.json) or plan.npz")
    r.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tetris-tvm`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
