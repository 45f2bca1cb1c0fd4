"""The ``tetris-tvm`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "build_parser"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless it has none or the help already says."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


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


def _latency(text: str) -> float | str:
    from .latency import parse_latency

    value: float | str = text if text.strip().lower().endswith("ms") else _number(text)
    try:
        parse_latency(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


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


def _calibration(args: argparse.Namespace) -> Any:
    """Calibration batches from --calibration FILE (a torch-saved list of batches) or, for zoo
    models, --calibrate N samples of the model's calibration split (never its held-out one)."""
    path = getattr(args, "calibration", None)
    n = getattr(args, "calibrate", 0)
    if n is None:  # the command's default: zoo models calibrate, others need --calibration
        n = args.calibrate_default if args.model in ("minilm", "mnist-cnn") else 0
    if path:
        import torch

        try:
            return torch.load(path, weights_only=True)
        except Exception as e:  # torch raises several kinds for a bad file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SystemExit(f"error: cannot read calibration batches from {path} (a list of "
                             f"input batches saved with torch.save): {first}") from None
    if n <= 0:
        return None
    from . import quality

    if args.model == "minilm":
        from .zoo import load_minilm

        return quality.minilm_calibration(load_minilm()[1], n=n,
                                          words=getattr(args, "calibrate_words", 0))
    if args.model == "mnist-cnn":
        return quality.mnist_calibration(n=n)
    raise SystemExit("error: --calibrate N draws from a zoo model's data; for other models save "
                     "a list of input batches with torch.save and pass --calibration FILE")


def _recovery(args: argparse.Namespace, quantize: str | None = None) -> dict[str, Any]:
    """compile/prune keyword arguments of the quality-recovery flags (and the calibration of
    static int8 activations)."""
    calibration = _calibration(args)
    if calibration is not None and getattr(args, "plan", None):
        return {"calibration": calibration} if quantize else {}
    if calibration is None:  # recovery off; options asked for explicitly need the data
        if args.reconstruct or args.allocation == "sensitivity" or args.importance not in (
            None, "magnitude"
        ):
            raise SystemExit("error: --reconstruct, --allocation sensitivity and --importance "
                             "need calibration data: --calibrate N or --calibration FILE")
        return {}
    # with calibration data, the command's full recipe unless a flag says otherwise
    budget = getattr(args, "latency", None)
    return {"calibration": calibration, "importance": args.importance,
            "reconstruct": True if args.reconstruct is None else args.reconstruct,
            "allocation": args.allocation or ("latency" if budget is not None
                                              else args.recovery_allocation)}


def _recovery_args(p: argparse.ArgumentParser, default_calibrate: int = 0,
                   allocation: str = "sensitivity") -> None:
    """The quality-recovery flags; with ``default_calibrate`` > 0, zoo models calibrate by
    default (reconstruction on, ``allocation`` per-layer sparsities)."""
    g = p.add_argument_group("quality recovery (one-shot, needs calibration data)")
    g.add_argument("--calibrate", type=int, default=None, metavar="N",
                   help="zoo models: calibrate on N samples of the model's calibration split "
                   f"(0 = off; default {default_calibrate})")
    g.add_argument("--calibrate-words", type=int, default=0, metavar="N",
                   help="minilm: also calibrate on N single vocabulary words (short inputs; "
                   "none from the word-similarity sets), after the --calibrate sentences")
    g.add_argument("--calibration", metavar="FILE",
                   help="calibration batches saved with torch.save (a list of inputs, tuples "
                   "of inputs or dicts of keyword inputs)")
    g.add_argument("--importance", choices=("magnitude", "activation", "hessian"),
                   help="what TETRIS clusters (default: activation with calibration data)")
    p.set_defaults(recovery_allocation=allocation, calibrate_default=default_calibrate)
    g.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                   help="refit the kept weights layer by layer to the dense outputs (default: "
                   "on with calibration data)")
    g.add_argument("--allocation", choices=("uniform", "sensitivity"), default=None,
                   help="per-layer sparsities: all equal, or chosen on the calibration data to "
                   "meet --sparsity globally at the least output error (default: "
                   f"{allocation} with calibration data)")


def _spec(args: argparse.Namespace, recovery: dict[str, Any] | None = None,
          **changes: Any) -> tuple[Any, Any]:
    """The command's :class:`~tetris_tvm.PruningSpec` from its flags (``changes`` on top), and
    its calibration data (None without); ``recovery``: :func:`_recovery`'s result, if made."""
    from .spec import PruningSpec

    if recovery is None:  # commands without the recovery flags (tune) have none
        recovery = (_recovery(args, quantize=getattr(args, "quantize", None))
                    if hasattr(args, "reconstruct") else {})
    recovery = dict(recovery)
    calibration = recovery.pop("calibration", None)
    options: dict[str, Any] = {
        "sparsity": getattr(args, "sparsity", None), "block_size": getattr(args, "block", None),
        "streams": getattr(args, "streams", None), "quantize": getattr(args, "quantize", None),
        "activations": getattr(args, "activations", None),
        "attention": getattr(args, "attention", None),
        "dtype": getattr(args, "dtype", None),
        "latency": getattr(args, "latency", None), "blocks": getattr(args, "blocks", None),
        **recovery,
    }
    if hasattr(args, "no_reorder"):
        options.update(reorder=not args.no_reorder, solver=args.solver, balanced=args.balanced)
    options.update(changes)
    return PruningSpec().with_options("tetris-tvm", **options), calibration


def _cmd_prune(args: argparse.Namespace) -> int:
    from .oneshot import prune

    model = load_user_model(args.model)
    start = time.perf_counter()
    spec, calibration = _spec(args)
    plan = prune(model, spec=spec, calibration=calibration, progress=not args.quiet)
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


def _model_and_plan(args: argparse.Namespace) -> tuple[Any, tuple, Any, str]:
    """The command's model, example inputs and plan (``--plan``), and how it is pruned in
    words."""
    from .plan import PruningPlan
    from .spec import DEFAULT_SPARSITY

    model = _load_any(args.model)
    inputs = _example_inputs(args, model)
    plan = PruningPlan.load(args.plan) if args.plan else None
    how = f"plan {args.plan}" if plan is not None else (
        f"sparsity {DEFAULT_SPARSITY if args.sparsity is None else args.sparsity}")
    return model, inputs, plan, how


def _cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile as tetris_compile

    model, inputs, plan, how = _model_and_plan(args)
    print(f"compiling {args.model} for {args.target} ({how}) ...", flush=True)
    start = time.perf_counter()
    spec, calibration = _spec(args)
    cm = tetris_compile(
        model, inputs, target=_target_arg(args.target), plan=plan, tuning=args.tuning,
        tuning_fallback=args.tuning_fallback, dynamic_batch=args.dynamic_batch, spec=spec,
        calibration=calibration,
    )
    print(f"compiled in {time.perf_counter() - start:.1f} s\n")
    print(cm.report.format_table())
    if args.model in ("minilm", "mnist-cnn"):
        print(f"\nheld-out quality (data no step saw): {_zoo_quality(args.model, model, cm)}",
              flush=True)
    if args.out:
        path = cm.export(args.out, cross_compiler=args.cross_compiler)
        print(f"\nwritten {path} (+ {path.name}.tetris.json)")
    if args.bundle:
        folder = cm.export_bundle(args.bundle, cross_compiler=args.cross_compiler,
                                  runtime_dir=args.runtime_dir)
        print(f"\ndeploy bundle written to {folder}: copy it to the device and run "
              f"./run_model model.so <inputs.npy> there (see {folder / 'README.txt'})")
    if args.save_plan:
        cm.plan.save(args.save_plan)
        print(f"plan written to {args.save_plan}")
    return 0


def _quality_line(metrics: dict[str, float], names: tuple) -> str:
    """``metrics[names]`` as one line; sentence cosines say which held-out set they are on."""
    label = {"cosine": "cosine in-domain", "cosine_ood": "cosine out-of-domain"}
    return ", ".join(
        f"{label.get(k, k.replace('cosine_', 'cosine ') if k.startswith('cosine_') else k)} "
        f"{metrics[k]:.3f}" for k in names)


def _zoo_quality(name: str, model: Any, cm: Any) -> str:
    """The held-out metric of a zoo model's build (measured on its reference, which the build
    computes) next to the dense model's."""
    from . import quality as q
    from .quantization import quantized_reference

    reference = quantized_reference(model, cm.plan)
    if name == "mnist-cnn":
        _, (hx, hy) = q.mnist_split()
        got, dense = q.classifier_accuracy(reference, hx, hy), q.classifier_accuracy(model, hx, hy)
        return f"accuracy {got:.3f} (dense {dense:.3f})"
    from .zoo import load_minilm

    evaluator = q.EncoderEvaluator(model, load_minilm()[1])
    got = evaluator.evaluate(reference)
    ood = ", ".join(f"{d} {got[f'cosine_{d}']:.3f}" for d in evaluator.other_domains)
    return (f"cosine to the dense embeddings {got['cosine']:.3f} in-domain (news)"
            + (f", out of domain: {ood}" if ood else "")
            + f"; WordSim353 {got['wordsim353']:.3f} (dense {evaluator.dense['wordsim353']:.3f})")


def _cmd_tune(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .tuning import tune

    model, inputs, plan, how = _model_and_plan(args)
    print(f"tuning {args.model} for {args.target} ({how}, {args.trials} "
          f"trials per task) into {args.work_dir} ...", flush=True)
    spec, _ = _spec(args)
    result = tune(
        model, inputs, target=_target_arg(args.target), work_dir=args.work_dir,
        trials=args.trials, plan=plan, max_trials_global=args.max_trials, rpc=args.rpc,
        timeout=args.timeout, progress=not args.quiet, cross_compiler=args.cross_compiler,
        spec=spec,
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

    from . import quality as q
    from .bench import time_interleaved
    from .compiler import compile as tetris_compile
    from .quantization import quantized_reference

    torch.set_num_threads(args.threads)
    model = _load_any(args.model)
    inputs = _example_inputs(args, model)
    recovery = _recovery(args)

    from .calibration import model_output as first

    def torch_out() -> np.ndarray:
        with torch.no_grad():
            return first(model(*inputs)).numpy()

    evaluate: Any = None
    if args.model == "minilm":
        from .zoo import load_minilm

        evaluator = q.EncoderEvaluator(model, load_minilm()[1])
        dense_quality = evaluator.dense
        evaluate = evaluator.evaluate
        names = ("cosine", *(f"cosine_{d}" for d in evaluator.other_domains), "wordsim353")
    elif args.model == "mnist-cnn":
        _, (hx, hy) = q.mnist_split()
        names = ("accuracy",)

        def evaluate(m: Any) -> dict[str, float]:
            return {"accuracy": q.classifier_accuracy(m.eval(), hx, hy)}

        dense_quality = evaluate(model)
    dense = torch_out()
    rows = []
    fns: dict[str, Any] = {"torch eager (dense)": torch_out}
    peer_quality: dict[str, str] = {}
    if args.peers:
        peer_quality = _bench_peers(args, model, inputs, recovery, evaluate, names, fns)
    if recovery:
        print(f"quality recovery: {len(recovery['calibration'])} calibration batches, "
              f"reconstruct={recovery['reconstruct']}, allocation={recovery['allocation']}")
    base, calibration = _spec(args, recovery, sparsity=None)
    for s in args.sparsity:
        print(f"compiling at sparsity {s} ...", flush=True)
        # calibration: the recovery of a pruned build, or the ranges of static int8 ones
        use = s > 0 or (args.quantize and args.activations == "static")
        cm = tetris_compile(model, inputs, target=_target_arg(args.target),
                            spec=base.with_options(sparsity=s),
                            calibration=calibration if use else None)
        out = first(cm(*inputs)).numpy()
        reference = quantized_reference(model, cm.plan)
        with torch.no_grad():
            ref = first(reference(*inputs)).numpy()
        if args.quantize:  # int8: two roundings of one model agree as vectors, not digits
            agree = q.mean_row_cosine(out.reshape(-1, out.shape[-1]),
                                      ref.reshape(-1, ref.shape[-1]))
            rel = f"token cosine {agree:.4f}"
        else:
            rel = f"{float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12)):.1e}"
        if evaluate is not None:
            got = evaluate(reference)  # the compiled model computes this reference (rel)
            quality = _quality_line(got, names)
        else:
            diff = np.abs(out - dense).max() / np.abs(dense).max()
            quality = f"max rel. diff to dense {diff:.3g}"
        rows.append((s, quality, cm.report.totals["weights_kept_fraction"], rel))
        cm._ensure_vm()
        tvm_args = [np.ascontiguousarray(x.numpy()) for x in inputs]
        fns[f"tetris-tvm s={s}"] = lambda cm=cm, a=tvm_args: cm.run_numpy(*a)
    print(f"\ntiming ({args.repeats} interleaved repeats, median, {args.threads} threads) ...")
    times = time_interleaved(fns, repeats=args.repeats)
    base = times["torch eager (dense)"]
    where = "held-out data" if evaluate is not None else "the timing input"
    print(f"\n{'variant':<22} {'ms':>8} {'speedup':>8}  quality on {where}")
    dq = _quality_line(dense_quality, names) if evaluate else "-"
    print(f"{'torch eager (dense)':<22} {base * 1e3:>8.1f} {1.0:>8.2f}  {dq}")
    for name, quality_text in peer_quality.items():
        print(f"{name:<22} {times[name] * 1e3:>8.1f} {base / times[name]:>8.2f}  "
              f"{quality_text}")
    for s, quality, kept, rel in rows:
        t = times[f"tetris-tvm s={s}"]
        name = f"tetris-tvm s={s}"
        print(f"{name:<22} {t * 1e3:>8.1f} {base / t:>8.2f}  {quality} "
              f"(weights kept {kept:.2f}; compiled vs its reference: {rel})")
    if peer_quality:
        best = min(peer_quality, key=lambda k: times[k])
        print(f"\nspeedups above are over torch eager; the fastest peer is {best} "
              f"({times[best] * 1e3:.1f} ms): compare at equal quality")
    return 0


def _bench_peers(args: argparse.Namespace, model: Any, inputs: tuple, recovery: dict,
                 evaluate: Any, names: tuple, fns: dict[str, Any]) -> dict[str, str]:
    """Every peer at every precision (float32, OpenVINO's default, int8), timed in ``fns``;
    returns each one's quality, measured by running the peer itself on the held-out data."""
    import importlib.util

    import numpy as np
    import torch

    from . import peers

    found = peers.available()
    minilm = args.model == "minilm"
    example = (inputs[0], torch.ones_like(inputs[0])) if minilm else inputs
    cal = recovery.get("calibration")
    if cal is None and args.model in ("minilm", "mnist-cnn"):
        from . import quality as q

        if minilm:
            from .zoo import load_minilm

            cal = q.minilm_calibration(load_minilm()[1], n=256)
        else:
            cal = q.mnist_calibration(n=500)
    nncf_data = None
    if cal is not None:
        nncf_data = [(b["input_ids"], b["attention_mask"]) if isinstance(b, dict)
                     else (b if isinstance(b, (tuple, list)) else (b,)) for b in cal]
    out: dict[str, str] = {}
    for variant in peers.VARIANTS:
        reason = found.get(variant.split("-")[0])
        if variant == "openvino-int8" and reason is None:
            if importlib.util.find_spec("nncf") is None:
                reason = "nncf is not installed (pip install -e \".[peers]\")"
            elif nncf_data is None:
                reason = "needs calibration data (--calibration FILE)"
        if reason is not None:
            print(f"{variant}: skipped ({reason})")
            continue
        print(f"preparing {variant} ...", flush=True)
        peer = peers.build(variant, model, example, threads=args.threads,
                           calibration=nncf_data if variant.endswith("int8") else None)
        fns[variant] = peer.timer(*(np.ascontiguousarray(x.numpy()) for x in example))
        if evaluate is None:
            got = peers.first_output(peer(*(x.numpy() for x in example)))
            want = fns["torch eager (dense)"]()  # the dense model's output
            diff = np.abs(got - want).max() / np.abs(want).max()
            out[variant] = f"max rel. diff to dense {diff:.3g}"
            continue
        keywords = ["input_ids", "attention_mask"] if minilm else None
        got = evaluate(peers.as_torch_module(peer, keywords, as_tuple=minilm))
        out[variant] = _quality_line(got, names)
    return out


def _hidden_layers(args: argparse.Namespace) -> Any:
    """--hidden-layers: 'none', module patterns, or 'auto' (transformer blocks; none for the
    MNIST CNN, which has no block list)."""
    if args.hidden_layers == "none" or (args.hidden_layers == "auto" and args.model != "minilm"):
        return None
    return args.hidden_layers


def _cmd_finetune(args: argparse.Namespace) -> int:
    import copy
    import json
    import os
    from pathlib import Path

    if args.resume and not args.checkpoint_dir:
        raise SystemExit("error: --resume continues from --checkpoint-dir: give the folder the "
                         "interrupted run wrote")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from . import quality as q
    from .compiler import graph_planner
    from .finetuning import FinetuneInterrupted, finetune

    torch.set_num_threads(args.threads)
    if args.model == "minilm":
        from .zoo import load_minilm

        model, tok = load_minilm()
        data = q.minilm_training_batches(tok, batch=args.batch_size)
        calibration = q.minilm_calibration(tok, n=256)
        evaluator = q.EncoderEvaluator(model, tok)
        evaluate: Any = evaluator.evaluate
        dense = evaluator.dense
        example = _example_inputs(args, model)
        overrides: dict[str, Any] = {"pooler.*": {"skip": True}}
    elif args.model == "mnist-cnn":
        from .zoo import load_mnist_cnn

        model = load_mnist_cnn()
        data = q.mnist_training_batches(batch=args.batch_size)
        calibration = q.mnist_calibration(n=1000)
        _, (hx, hy) = q.mnist_split()

        def evaluate(m: Any) -> dict[str, float]:
            return {"accuracy": q.classifier_accuracy(m, hx, hy)}

        dense = evaluate(model)
        example = _example_inputs(args, model)
        overrides = {}
    else:
        raise SystemExit("error: finetune runs on the zoo models (minilm, mnist-cnn); for your "
                         "own model call tetris_tvm.finetune() with your data")
    print("dense, held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in dense.items()))
    planner = graph_planner(model, example, args.block or (32, 32), overrides=overrides)
    start = time.perf_counter()
    try:
        trained, plan = finetune(
            copy.deepcopy(model), data, args.sparsity, args.block or (32, 32), steps=args.steps,
            lr=args.lr, prune_every=args.prune_every, ramp=args.ramp,
            allocation=args.allocation, overrides=overrides, planner=planner,
            calibration=calibration, evaluate=evaluate, eval_every=args.eval_every,
            checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
            resume=args.resume, seed=args.seed,
            hidden_layers=_hidden_layers(args),
        )
    except FinetuneInterrupted as e:
        print(f"\n{e}; rerun the same command with --resume to continue")
        return 130
    took = time.perf_counter() - start
    final = plan.settings["finetune"]["history"][-1] if plan.settings["finetune"]["history"] \
        else {}
    print(f"\nfine-tuned in {took:.0f} s; held-out: "
          + ", ".join(f"{k} {v:.4f}" for k, v in final.items() if k not in ("step",)))
    if args.out:
        plan.save(args.out)
        print(f"plan with the fine-tuned weights written to {args.out}; compile it with "
              f"'tetris-tvm compile --model {args.model} --plan {args.out}'")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"seconds": took, "dense": dense, **plan.settings["finetune"]}, indent=1,
            default=float))
    del trained
    return 0


def _command(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *groups: Callable[[argparse.ArgumentParser], None],
    help: str,  # noqa: A002 - argparse's name
    description: str,
) -> argparse.ArgumentParser:
    """The subcommand ``name`` that runs ``func``, with the argument ``groups`` added first."""
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=_HelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error instead of one line")
    for add in groups:
        add(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tetris-tvm",
        description="TETRIS reorder-and-block-prune for PyTorch models, compiled with TVM.",
    )
    parser.add_argument("--version", action="version", version=f"tetris-tvm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub, "prune", _cmd_prune,
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
    _recovery_args(p)

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
        p.add_argument("--block", type=_block, default=None,
                       help="block, e.g. 32 or 16x32 (default 32x32; a --plan fixes its own)")

    def quant_args(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("int8 (CPU: VNNI, AVX2, sdot...; CUDA: dp4a)")
        g.add_argument("--quantize", choices=["int8"], default=None,
                       help="run the Linear layers and convs on int8 operands with the target's "
                       "dot-product instructions (default: float32)")
        g.add_argument("--activations", choices=["dynamic", "static"], default="dynamic",
                       help="int8 inputs quantized per row from their own range (dynamic) or "
                       "with per-layer ranges calibrated on --calibrate/--calibration data")
        g.add_argument("--attention", choices=["float32", "int8"], default=None,
                       help="precision of attention's two matmuls (fused CPU kernel; default: "
                       "int8 with --quantize int8, else float32)")

    def pruning_args(p: argparse.ArgumentParser) -> None:
        """How compile and tune prune: a sparsity, or a saved plan (same plan -> same kernels)."""
        p.add_argument("--sparsity", type=_sparsity, default=None,
                       help="fraction of blocks pruned (default 0.75; a --plan fixes its own)")
        p.add_argument("--plan", help="use this saved plan (.npz) instead of computing one")
        p.add_argument("--streams", choices=("auto", "shared", "separate"), default="auto",
                       help="residual streams: one permutation for all their layers when it "
                       "keeps more and needs no runtime gather (auto), also when it needs "
                       "gathers (shared), or never (separate)")

    c = _command(
        sub, "compile", _cmd_compile, model_args, pruning_args,
        help="prune and compile a model, print the report, export a .so",
        description="Prune a model with TETRIS, compile it with block-sparse kernels, print "
        "the per-layer report and optionally export a deployable shared library.",
    )
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
    quant_args(c)
    c.add_argument("--out", help="export the compiled model to this .so")
    c.add_argument("--cross-compiler",
                   help="e.g. aarch64-linux-gnu-g++ (with a matching --target)")
    c.add_argument("--bundle", metavar="DIR",
                   help="write a deploy bundle: the model, the TVM runtime for the target's "
                   "architecture and a C++ runner (no Python on the device)")
    c.add_argument("--runtime-dir", metavar="DIR",
                   help="for --bundle: the device's libtvm_runtime.so / libtvm_ffi.so (or the "
                   "apache-tvm wheels); default: this machine's TVM, or pip download")
    c.add_argument("--save-plan", help="write the plan used to this .npz")
    _recovery_args(c, default_calibrate=256, allocation="sensitivity")
    g = c.add_argument_group("latency budget (instead of --sparsity; needs calibration data)")
    g.add_argument("--latency", type=_latency, default=None,
                   help="choose every layer's sparsity and block shape to run in this "
                   "fraction of the dense build's time (0.5) or milliseconds ('20ms'), "
                   "from kernel times measured on this machine (cached)")
    g.add_argument("--blocks", type=_block, nargs="+", default=None, metavar="BLOCK",
                   help="block shapes --latency chooses from (default 32x4 16x4 32x1)")

    t = _command(
        sub, "tune", _cmd_tune, model_args, pruning_args,
        help="auto-tune every kernel of a model with MetaSchedule (XGBoost cost model)",
        description="Prune and lower a model as 'compile' does, then tune all its kernels "
        "(block-sparse and dense) in one MetaSchedule run with the XGBoost cost model. The "
        "fastest records of each kernel are checked against the unscheduled kernel and kept "
        "only if they beat the default schedule. Records persist in --work-dir (one folder "
        "per target); rerunning resumes, Ctrl-C keeps the records committed so far.",
    )
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

    b = _command(
        sub, "bench", _cmd_bench, model_args,
        help="compare latency and held-out quality against dense torch",
        description="Compile the model at each sparsity (zoo models: with one-shot quality "
        "recovery on calibration data) and time it against torch eager (dense) in one "
        "process, interleaved, median of repeats. Quality is measured on held-out data the "
        "pruning never saw (MiniLM: cosine to the dense sentence embeddings in-domain, on the "
        "held-out news of lee.cor, and out of domain, on conversation and technical prose "
        "from sources no step reads, and WordSim353 Spearman; MNIST CNN: accuracy on the "
        "1000 held-out images).",
    )
    b.add_argument("--sparsity", type=_sparsity, nargs="+", default=[0.0, 0.5, 0.75],
                   help="sparsities to compile (0 = dense through the same path)")
    b.add_argument("--repeats", type=int, default=7, help="interleaved repeats")
    b.add_argument("--peers", action="store_true",
                   help="also time ONNX Runtime and OpenVINO at every precision (float32, "
                   "OpenVINO's default, int8), each with its own held-out quality (pip "
                   "install -e \".[peers]\")")
    b.add_argument("--threads", type=int, default=2, help="torch threads")
    quant_args(b)
    b.add_argument("--streams", choices=("auto", "shared", "separate"), default="auto",
                   help="residual-stream permutations, as for compile")
    _recovery_args(b, default_calibrate=256, allocation="uniform")

    f = _command(
        sub, "finetune", _cmd_finetune, model_args,
        help="prune a zoo model gradually while distilling from its dense self",
        description="Gradual TETRIS pruning (cubic sparsity ramp, re-planned every "
        "--prune-every steps with the compiler's folding constraints) with knowledge "
        "distillation from the dense model, on the model's training split; held-out quality "
        "is printed every --eval-every steps. Checkpoints go to --checkpoint-dir; Ctrl-C stops "
        "after the current step and --resume continues. The plan written to --out carries the "
        "fine-tuned weights: 'tetris-tvm compile --plan' builds exactly that model.",
    )
    f.add_argument("--sparsity", type=_sparsity, default=0.5, help="target sparsity")
    f.add_argument("--steps", type=int, default=2400, help="optimizer steps")
    f.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    f.add_argument("--hidden-layers", default="auto",
                   help="also distil these modules' outputs: 'auto' (the transformer blocks; "
                   "the MNIST CNN has none), module-name patterns, or 'none'")
    f.add_argument("--batch-size", type=int, default=32, help="training batch")
    f.add_argument("--prune-every", type=int, default=50, help="steps between re-plannings")
    f.add_argument("--ramp", type=float, default=0.6,
                   help="fraction of the steps over which the sparsity ramps to the target")
    f.add_argument("--allocation", choices=("uniform", "sensitivity"), default="sensitivity",
                   help="per-layer target sparsities (see 'prune')")
    f.add_argument("--eval-every", type=int, default=250, help="held-out evaluation interval")
    f.add_argument("--checkpoint-dir", help="write checkpoints here")
    f.add_argument("--checkpoint-every", type=int, default=200, help="checkpoint interval")
    f.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint-dir (which it needs)")
    f.add_argument("--seed", type=int, default=0, help="seed of the batch order and dropout")
    f.add_argument("--threads", type=int, default=2, help="torch threads")
    f.add_argument("--out", help="write the final plan (masks + fine-tuned weights) here")
    f.add_argument("--json", help="write the run's settings and held-out history here")

    r = _command(
        sub, "report", _cmd_report,
        help="print the report of an exported model (.so) or a saved plan (.npz)",
        description="Print the per-layer table of an exported model or a saved plan.",
    )
    r.add_argument("path", help="model.so (reads model.so.tetris.json) or plan.npz")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tetris-tvm`` console script: an error is one ``error:`` line on
    stderr and exit status 1 (``--debug`` shows the traceback instead)."""
    args = build_parser().parse_args(argv)
    if not args.debug:  # a warning is one line in our words, not Python's source excerpt
        import warnings

        warnings.formatwarning = lambda message, *_a, **_k: f"warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # the command has said what it kept; no traceback
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        if args.debug:
            raise
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        print(f"error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
        for line in lines[1:3]:  # a hint, if the error gives one
            if line.startswith("hint:"):
                print(line, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
