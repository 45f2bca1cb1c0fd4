"""``tetris_tvm.compile``: torch model -> pruned, block-sparse TVM module; export and load.

Two stages: :func:`lower` (plan, prune, fold, lower to kernels: a :class:`LoweredModel`) and
:func:`build` (schedule, tuning records, codegen: a :class:`CompiledModel`). Pipeline
(design.md)::

    torch.export -> Relax (weights as named params)
      -> plan_graph + TetrisPrune -> bind weights -> FoldPermutations -> LowerBlockSparse
      -> LegalizeOps / FoldConstant / FuseOps / FuseTIR
      -> default schedules for the target (ours first, then dlight), tuning database if any
      -> tvm.compile -> CompiledModel
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._compat import quiet_vm_serialization
from .attr_keys import Attr
from .runtime import (
    META_SUFFIX,
    LoadedModel,
    ModelRunner,
    flatten_tensors,
    load,
    use_all_cores,
)
from .schedules.database import apply_tuning
from .schedules.pipeline import default_rules, lowering_pipeline, schedule_module
from .schedules.targets import resolve_target
from .spec import PruningSpec

__all__ = [
    "compile",
    "CompiledModel",
    "LoadedModel",
    "load",
    "build",
    "lower",
    "lower_model",
    "plan_model",
    "graph_planner",
    "GraphPlanner",
    "LoweredModel",
    "lowering_pipeline",
    "default_rules",
    "resolve_target",
    "Report",
    "use_all_cores",
]

# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class Report:
    """What the compiler did: one row per weight layer plus totals."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    runtime_gathers: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    tuned_kernels: int = 0  # kernels whose schedule came from a tuning database
    # the compiled model's outputs against the dense torch model's on the example inputs
    # (relative L2 error, cosine): what pruning (and int8) changed, before any held-out data
    output_change: dict[str, float] = field(default_factory=dict)
    # one row per channel stream shared by several layers: separate vs shared permutation
    streams: list[dict[str, Any]] = field(default_factory=list)
    # the precision of each scaled_dot_product_attention run by the fused CPU kernel
    attention: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, Any]:
        weights = sum(r["weights"] for r in self.layers)
        kept = sum(r["weights_kept"] for r in self.layers)
        flops = sum(r["flops"] for r in self.layers)
        flops_kept = sum(r["flops"] * r["density"] for r in self.layers)
        return {
            "layers": len(self.layers),
            "weights": weights,
            "weights_kept": kept,
            "weights_kept_fraction": kept / weights if weights else 1.0,
            "flops": flops,
            "flops_kept_fraction": flops_kept / flops if flops else 1.0,
            "runtime_gathers": self.runtime_gathers,
            "tuned_kernels": self.tuned_kernels,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "totals": self.totals,
            "skipped": self.skipped,
            "streams": self.streams,
            "attention": self.attention,
            "output_change": self.output_change,
        }

    def format_table(self) -> str:
        names = [r["name"] for r in self.layers] + [s["name"] for s in self.skipped]
        w = max([len(n) for n in names] + [5])
        head = (
            f"{'layer':<{w}} {'shape':<16} {'block':<7} {'kept':>9} {'ret.L1':>7} "
            f"{'precision':<9} {'kernel':<17} fused"
        )
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(
                f"{r['name']:<{w}} {'x'.join(map(str, r['shape'])):<16} "
                f"{'x'.join(map(str, r['block'])):<7} "
                f"{str(r['kept_blocks']) + '/' + str(r['blocks']):>9} {r['retained_l1']:>7.3f} "
                f"{r.get('precision', 'float32'):<9} {r['kernel']:<17} {r['fused']}"
            )
        for s in self.skipped:
            lines.append(f"{s['name']:<{w}} dense: {s['reason']}")
        for st in self.streams:
            shared = st["retained_l1_shared"]
            lines.append(
                f"stream of {st['channels']} channels, {len(st['layers'])} layers, "
                f"{st['joins']} joins: ret.L1 separate {st['retained_l1_separate']:.3f}, "
                f"shared {'-' if shared is None else format(shared, '.3f')}"
                f" ({st['runtime_gathers_shared']} gathers) -> {st['choice']}"
                + (f" ({st['reason']})" if st["reason"] else "")
            )
        if self.attention:
            counts = {p: self.attention.count(p) for p in dict.fromkeys(self.attention)}
            lines.append("attention: fused kernel, " + ", ".join(
                f"{n} call{'s' if n > 1 else ''} {p}" for p, n in counts.items()))
        t = self.totals
        lines.append(
            f"weights kept {t['weights_kept_fraction']:.3f}, FLOPs kept "
            f"{t['flops_kept_fraction']:.3f}, runtime gathers {t['runtime_gathers']}, "
            f"tuned kernels {t['tuned_kernels']}"
        )
        if self.output_change:
            c = self.output_change
            lines.append(f"outputs on the example inputs vs the dense model: cosine "
                         f"{c['cosine']:.4f}, relative error {c['relative_error']:.3g}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the compiled model


class CompiledModel(ModelRunner):
    """A compiled model: call it like the torch module (torch tensors or numpy in, torch out).

    Safe to call from several threads at once (each thread runs its own VM over the one
    executable)."""

    def __init__(
        self,
        executable: Any,
        target: Any,
        plan: Any,
        report: Report,
        meta: Mapping[str, Any],
        ir: Any = None,
    ) -> None:
        device = "cuda" if target.kind.name == "cuda" else "cpu"
        ModelRunner.__init__(self, executable, device, meta)
        self.target = target
        self.plan = plan
        self.report = report
        self.ir = ir

    def _ensure_vm(self) -> None:
        """Make the calling thread's VM now (calls make it when needed)."""
        self._vm_of_thread()

    def __call__(self, *inputs: Any) -> Any:
        import torch

        tensors = flatten_tensors(self.run_tvm(*inputs))
        if self._device_name == "cpu":  # the VM's fresh outputs, shared, not copied
            outs = [torch.from_dlpack(t) for t in tensors]
        else:
            outs = [torch.from_numpy(t.numpy()) for t in tensors]
        return tuple(outs) if self.meta["output_is_tuple"] or len(outs) > 1 else outs[0]

    def device_source(self) -> str:
        """Generated device code (CUDA C++ for a cuda target; empty for CPU builds)."""

        def walk(module: Any) -> str:
            kind = getattr(module, "kind", None) or getattr(module, "type_key", "")
            if kind == "cuda":
                return str(module.inspect_source())
            return "".join(walk(m) for m in module.imports)

        return walk(self.executable.mod)

    def meta_inputs(self) -> list[dict[str, Any]]:
        """Per input: name, shape (None: dynamic), dtype and batch bound."""
        return [dict(d) for d in self.meta.get("inputs", [])]

    def export_bundle(self, directory: str | os.PathLike[str], cross_compiler: str | None = None,
                      runtime_dir: str | os.PathLike[str] | None = None,
                      download: bool = True) -> Path:
        """A folder to copy to the device and run there without Python: the model, the TVM
        runtime for its architecture and a C++ runner (:func:`tetris_tvm.deploy.export_bundle`)."""
        from .deploy import export_bundle

        return export_bundle(self, directory, cross_compiler=cross_compiler,
                             runtime_dir=runtime_dir, download=download)

    def export(self, path: str | os.PathLike[str], cross_compiler: str | None = None) -> Path:
        """Write a deployable shared library (and a small ``.tetris.json`` beside it).

        ``cross_compiler`` (e.g. ``"aarch64-linux-gnu-gcc"``) links for another machine; the
        target given to :func:`compile` must describe that machine (e.g.
        ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "num-cores": 4}``). Both files are
        written under temporary names and renamed, so ``path`` never holds half a library;
        the metadata records the library's size and SHA-256, which :func:`load` checks.
        """
        from .libfile import describe, partial_path

        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path}: a folder; export to a file such as {path / 'model.so'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot export to {path}: cannot make its folder "
                             f"({e.strerror})") from None
        partial = partial_path(path)
        try:
            self._link(partial, cross_compiler)
            data = partial.read_bytes()
            meta = {**self._meta_for_export(), "library": describe(data)}
            meta_partial = Path(str(partial) + META_SUFFIX)
            meta_partial.write_text(json.dumps(meta, indent=1, default=str))
            os.replace(partial, path)
            os.replace(meta_partial, Path(str(path) + META_SUFFIX))
        except OSError as e:
            raise ValueError(f"cannot export to {path}: {e.strerror or e}") from None
        finally:
            partial.unlink(missing_ok=True)
            Path(str(partial) + META_SUFFIX).unlink(missing_ok=True)
        return path

    def _link(self, out: Path, cross_compiler: str | None) -> None:
        """Link the executable into the shared library ``out``."""
        import shutil

        fcompile = None
        if cross_compiler:
            from tvm.support import cc

            if shutil.which(cross_compiler) is None:
                raise ValueError(f"cross compiler {cross_compiler!r} not found on PATH (e.g. "
                                 "apt-get install g++-aarch64-linux-gnu)")
            fcompile = cc.cross_compiler(cross_compiler)
        try:
            with quiet_vm_serialization():
                if fcompile is None:
                    self.executable.export_library(str(out))
                else:
                    self.executable.export_library(str(out), fcompile=fcompile)
        except Exception as e:  # noqa: BLE001 - the linker's failure, in one line
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise RuntimeError(f"linking {out.name} failed: "
                               f"{lines[-1] if lines else type(e).__name__}") from None

    def _meta_for_export(self) -> dict[str, Any]:
        return {**self.meta, "target": str(self.target), "report": self.report.to_dict()}


# ---------------------------------------------------------------------------------------------
# compile


def _eligible_names(model: Any) -> tuple[set[str] | None, list[dict[str, str]]]:
    """Weight names of Linear / Conv2d(groups=1) layers, and the other layers with a reason."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return None, []
    from .plan import eligible_layer as _eligible

    names, skipped = set(), []
    for mod_name, module in model.named_modules():
        if not list(module.parameters(recurse=False)):
            continue
        ok, reason = _eligible(module)
        if ok:
            names.add(f"{mod_name}.weight" if mod_name else "weight")
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            skipped.append({"name": mod_name, "reason": reason})
    return names, skipped








@dataclass
class LoweredModel:
    """A model after pruning and lowering: unscheduled TensorIR kernels in a Relax module."""

    mod: Any
    target: Any
    plan: Any
    report: Report
    meta: dict[str, Any]


def lower_model(
    model: Any,
    example_inputs: Sequence[Any] | Any,
    target: Any = "llvm",
    sparsity: float | None = None,
    block_size: int | tuple[int, int] | None = None,
    plan: Any = None,
    *,
    spec: PruningSpec | None = None,
    calibration: Any = None,
    dynamic_batch: bool | int = False,
    progress: bool = True,
    **options: Any,
) -> LoweredModel:
    """Everything :func:`compile` does before scheduling (arguments as there): the first
    stage of the compiler, whose result :func:`build` and :func:`tetris_tvm.tune` both take.

    The result's ``mod`` holds one unscheduled PrimFunc per kernel: what the default schedule
    rules and :func:`tetris_tvm.tune` work on.
    """
    spec = _spec(spec, "compile", sparsity=sparsity, block_size=block_size, **options)
    use_all_cores()
    import tvm
    from tvm import relax

    from .frontend import BindWeights, import_model, max_batch
    from .passes import (
        ClipGatherIndices,
        FastActivations,
        FoldBatchNorm,
        FoldPermutations,
        LowerAttention,
        LowerBlockSparse,
    )
    from .passes.attention import fused_attention_calls
    from .passes.lower import lowered_layers

    _check_model(model)
    _check_plan(plan, spec)
    tgt = resolve_target(target)
    _check_quantize(spec, tgt, model, dynamic_batch, calibration)
    # checks dtype before the slow steps; CPU schedules run row chunks in parallel, and their
    # dense linears use 32-wide weight panels (docs/results.md, "CPU schedule choices")
    cpu = tgt.kind.name == "llvm"
    max_batch(dynamic_batch)  # checks an int bound
    eligible, skipped = _eligible_names(model)
    # on CPU, attention runs as one fused kernel (static shapes: LowerAttention below)
    imported = import_model(model, example_inputs, dynamic_batch=dynamic_batch,
                            keep_attention=cpu and not dynamic_batch)
    plan, prune_pass, stream_report = _plan_imported(
        model, imported, plan, eligible, spec,
        calibration=None if spec.quantize and plan is not None else calibration,
        progress=progress, target=tgt, example_inputs=example_inputs,
    )
    if spec.quantize is not None:
        attention = spec.attention_precision if imported.kept_attention else "float32"
        plan = _quantized_plan(model, plan, tgt, spec.activations, calibration, attention)
    lower = LowerBlockSparse(dtype=spec.dtype, row_chunks=cpu, dense_block_n=32 if cpu else 16,
                             quantization=plan.quantization, threads=_threads(tgt))
    passes = tvm.transform.Sequential(
        [
            prune_pass,  # apply the plan (computed by plan_graph above, or given)
            BindWeights(imported.weights),
            FoldPermutations(),
            FoldBatchNorm(),  # eval batch norms scale the weights (after the permutations)
            relax.transform.DeadCodeElimination(),
            lower,
            *([LowerAttention(_attention_dot(plan, tgt))] if cpu else []),
            FastActivations(),
            ClipGatherIndices(),
            lowering_pipeline(),
        ],
        name="tetris_lower",
    )
    with tgt:
        mod = passes(imported.mod)
    gathers = mod.attrs.get(Attr.RUNTIME_GATHERS) if mod.attrs is not None else None
    report = _report(plan, lowered_layers(mod), int(gathers or 0), skipped)
    report.streams = list(stream_report)
    report.attention = fused_attention_calls(mod)
    meta = {"input_names": imported.input_names, "output_is_tuple": imported.output_is_tuple,
            "inputs": imported.input_specs}
    return LoweredModel(mod, tgt, plan, report, meta)


lower = lower_model


def _spec(spec: PruningSpec | None, where: str, **options: Any) -> PruningSpec:
    """``spec`` (or the default spec) with the keyword shortcuts applied and checked."""
    if spec is not None and not isinstance(spec, PruningSpec):
        raise ValueError(f"{where}: spec must be a tetris_tvm.PruningSpec, got "
                         f"{type(spec).__name__}")
    return (spec or PruningSpec()).with_options(where, **options)


def plan_model(
    model: Any,
    example_inputs: Sequence[Any] | Any,
    sparsity: float | None = None,
    block_size: int | tuple[int, int] | None = None,
    *,
    spec: PruningSpec | None = None,
    calibration: Any = None,
    progress: bool = True,
    target: Any = "llvm",
    **options: Any,
) -> Any:
    """The plan :func:`compile` would compute for ``model`` (same arguments), without
    building anything but, with a ``latency`` budget, the kernels it times on ``target``:
    its permutations fold away in the compiled graph, and with the
    recovery options it carries the refitted weights. ``compile(model, ..., plan=plan)``
    then builds exactly this model; ``plan.apply(copy)`` is its torch reference, e.g. to
    measure quality."""
    from .frontend import import_model

    spec = _spec(spec, "plan_model", sparsity=sparsity, block_size=block_size, **options)
    _check_model(model)
    eligible, _ = _eligible_names(model)
    imported = import_model(model, example_inputs)
    plan, _, _ = _plan_imported(model, imported, None, eligible, spec,
                                calibration=calibration, progress=progress,
                                target=resolve_target(target), example_inputs=example_inputs)
    return plan


class GraphPlanner:
    """Plans the way :func:`compile` does, for the model's CURRENT weights, many times.

    The model is exported once; each call reads the weights anew and runs
    :func:`~tetris_tvm.passes.plan_graph` (permutations that fold away in the compiled
    graph, coupled layers, shared streams). Made by :func:`graph_planner`;
    :func:`tetris_tvm.finetune` calls it at every pruning step as
    ``planner(model, sparsity, scores)``.
    """

    def __init__(self, model: Any, example_inputs: Sequence[Any] | Any, block_size: Any,
                 overrides: Mapping[str, Any] | None = None, streams: str = "auto") -> None:
        from .frontend import import_model

        self.block_size = block_size
        self.overrides = overrides
        self.streams = streams
        self.eligible, _ = _eligible_names(model)
        self.imported = import_model(copy.deepcopy(model).eval(), example_inputs)

    def __call__(self, model: Any, sparsity: float, scores: Mapping[str, np.ndarray] | None,
                 overrides: Mapping[str, Any] | None = None) -> Any:
        from .passes import plan_graph

        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        weights = dict(self.imported.weights)
        for relax_name, torch_name in self.imported.torch_names.items():
            if torch_name in state:
                weights[relax_name] = state[torch_name].astype(weights[relax_name].dtype)
        plan, _ = plan_graph(
            self.imported.mod, weights, self.imported.torch_names, eligible=self.eligible,
            sparsity=sparsity, block_size=self.block_size,
            overrides={**(self.overrides or {}), **(overrides or {})},
            streams=self.streams, scores=scores, progress=False,
        )
        return plan


def graph_planner(model: Any, example_inputs: Sequence[Any] | Any,
                  block_size: int | tuple[int, int] | None = None, *,
                  spec: PruningSpec | None = None,
                  overrides: Mapping[str, Any] | None = None, streams: str | None = None
                  ) -> GraphPlanner:
    """A planner for :func:`tetris_tvm.finetune` (or a :class:`~tetris_tvm.GradualPruner`)
    whose plans compile with no runtime gathers (``compile(model, example_inputs,
    plan=plan)``); blocks, overrides and streams from ``spec`` and the keywords."""
    spec = _spec(spec, "graph_planner", block_size=block_size, overrides=overrides,
                 streams=streams)
    return GraphPlanner(model, example_inputs, spec.block, spec.overrides, spec.streams)


def _attention_dot(plan: Any, target: Any) -> Any:
    """The int8 dot-product instruction attention uses on ``target`` (None: float32)."""
    if (getattr(plan, "quantization", None) or {}).get("attention") != "int8":
        return None
    from .kernels.int8 import dot_for_target

    return dot_for_target(target)


def _threads(target: Any) -> int:
    """Threads the target's kernels run on: its ``num-cores``, else this machine's cores."""
    cores = target.attrs.get("num-cores") if target.attrs is not None else None
    return int(cores) if cores else len(os.sched_getaffinity(0))


def _check_quantize(spec: PruningSpec, target: Any, model: Any, dynamic_batch: Any,
                    calibration: Any) -> None:
    """The spec's precision against what this build supports, in our words."""
    import torch

    if spec.quantize is None:
        return
    if target.kind.name not in ("llvm", "cuda"):
        raise ValueError(f"int8 builds target CPUs ('llvm') and CUDA GPUs ('cuda'), not "
                         f"{target.kind.name!r}")
    if dynamic_batch:
        raise ValueError("int8 builds need a fixed batch (compile without dynamic_batch)")
    if not isinstance(model, torch.nn.Module):
        raise ValueError("an int8 build needs the torch.nn.Module (its Linear and Conv2d "
                         "layers), not an ExportedProgram")
    if spec.activations == "static" and calibration is None:
        raise ValueError("activations='static' calibrates each layer's input range: pass "
                         "calibration=[example inputs]")


def _quantized_plan(model: Any, plan: Any, target: Any, activations: str,
                    calibration: Any, attention: str = "float32") -> Any:
    """``plan`` with the int8 settings of :mod:`tetris_tvm.quantization` for ``target``."""
    from dataclasses import replace

    from .kernels.int8 import dot_for_target
    from .quantization import calibrate_ranges, int8_settings

    dot = dot_for_target(target)
    ranges = None
    if activations == "static":
        ranges = calibrate_ranges(model, plan, calibration, list(plan))
    settings = int8_settings(model, plan, dot, activations, ranges, attention=attention)
    unfit = sorted(n for n, why in settings["float32"].items() if "blocks need" in why)
    if unfit:
        import warnings

        warnings.warn(
            f"quantize='int8': {len(unfit)} pruned Linear layer(s) stay float32 because "
            f"{settings['float32'][unfit[0]]} on this target ({', '.join(unfit[:3])}"
            f"{', ...' if len(unfit) > 3 else ''}); plan them with such blocks to run them "
            "in int8", stacklevel=4)
    return replace(plan, quantization=settings, _handles=[])


def _check_model(model: Any) -> None:
    """A torch module or ExportedProgram of float32 parameters, or a ValueError that says
    what to do."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module or torch.export.ExportedProgram, "
                         f"got {type(model).__name__}")
    dtypes = {p.dtype for p in model.parameters()} | {b.dtype for b in model.buffers()
                                                      if b.is_floating_point()}
    other = sorted(str(d).removeprefix("torch.") for d in dtypes
                   if d.is_floating_point and d != torch.float32)
    if other:
        raise ValueError(
            f"the model's parameters are {', '.join(other)}: tetris-tvm compiles float32 "
            "models; convert a copy with .float() (and pass float32 inputs). For half-"
            "precision kernels, compile the float32 model with dtype='float16' or 'bfloat16'")


def _check_plan(plan: Any, spec: PruningSpec) -> None:
    """A given plan fixes every layer's blocks: a spec sparsity or block size that disagrees
    with it is an error, not silently ignored."""
    from .plan import PruningPlan, clamp_block

    if plan is None:
        return
    if not isinstance(plan, PruningPlan):
        raise ValueError(f"plan must be a tetris_tvm.PruningPlan, got {type(plan).__name__}")
    plan.validate("plan")
    if spec.block_size is not None:
        for name, lp in plan.items():
            if tuple(lp.block_size[:2]) != clamp_block(spec.block_size, lp.shape):
                raise ValueError(
                    f"compile: block_size={spec.block_size!r}, but the plan prunes {name} in "
                    f"{'x'.join(map(str, lp.block_size[:2]))} blocks: a plan fixes every "
                    "layer's blocks; leave block_size out (or plan again with it)")
    planned = plan.settings.get("sparsity")
    if (spec.sparsity is not None and isinstance(planned, (int, float))
            and abs(planned - spec.sparsity) > 1e-9):
        raise ValueError(
            f"compile: sparsity={spec.sparsity:g}, but the plan was made at sparsity "
            f"{planned:g}: a plan fixes every layer's blocks; leave sparsity out (or plan "
            "again with it)")


def _plan_imported(
    model: Any,
    imported: Any,
    plan: Any,
    eligible: set[str] | None,
    spec: PruningSpec,
    *,
    calibration: Any,
    progress: bool,
    target: Any = None,
    example_inputs: Any = None,
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The plan for an imported model (computed by :func:`~tetris_tvm.passes.plan_graph`
    with the graph's folding constraints unless given), with quality recovery when
    calibration data is given, the TetrisPrune pass that applies it, and the planning's
    stream report (empty for a given or recovered plan). The imported weights are updated
    to the values the plan carries."""
    from .passes import TetrisPrune, plan_graph

    if plan is not None:
        plan = _canonical(plan, imported.aliases)
        missing = [n for n in plan if n not in imported.torch_names.values()]
        if missing:
            raise ValueError(f"plan has layers the model does not: {missing[:5]}")
        if (calibration is not None or spec.reconstruct
                or spec.allocation not in (None, "uniform")):
            raise ValueError("give either plan= or the recovery options (calibration, "
                             "reconstruct, allocation), not both: a given plan is used as it is")
    setup = None
    sparsity, block_size = spec.target_sparsity, spec.block
    overrides = spec.overrides
    importance, reconstruct, allocation = spec.recovery(calibration is not None)
    if plan is None and spec.prunes and (calibration is not None or reconstruct
                                         or allocation != "uniform"
                                         or importance != "magnitude"):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise ValueError("calibration-aware pruning needs the torch.nn.Module, not an "
                             "ExportedProgram")
        from .oneshot import prepare_recovery

        timer = None
        if allocation == "latency":
            timer = _kernel_timer(model, example_inputs, spec, target)
        setup = prepare_recovery(
            model, sparsity, block_size, calibration=calibration, importance=importance,
            allocation=allocation, reconstruct=reconstruct, method="tetris",
            overrides=overrides, latency=spec.latency, candidates=spec.candidate_blocks,
            timer=timer, progress=progress,
        )
        overrides = setup.overrides(overrides)

    def planned(scores: Any, show: bool, sparsities: Any = None) -> tuple[Any, list]:
        return plan_graph(
            imported.mod,
            imported.weights,
            imported.torch_names,
            eligible=eligible,
            sparsity=sparsity,
            block_size=block_size,
            prune_options=spec.prune_options,
            allow_gathers=spec.allow_gathers,
            overrides=overrides,
            streams=spec.streams,
            scores=scores,
            progress=show,
            sparsities=sparsities,
        )

    stream_report: list[dict[str, Any]] = []
    if setup is not None:
        plan, _ = planned(setup.scores, progress, setup.sparsities)  # stream rows not reported
        plan.settings.update(setup.settings(), reconstruct=bool(reconstruct))
        if reconstruct:
            from .reconstruct import reconstruct as reconstruct_plan

            plan, rows = reconstruct_plan(model, plan, setup.batches, progress=progress)
            plan.settings["reconstruction"] = rows
        plain_sparsities = setup.sparsities if allocation == "latency" else None
        plan = setup.keep_better(model, plan, lambda: planned(None, False, plain_sparsities)[0])
        if allocation == "latency":  # no global sparsity was asked for: record what was met
            kept = sum(int(lp.mask.sum()) for lp in plan.layers.values())
            total = sum(int(lp.mask.size) for lp in plan.layers.values())
            plan.settings["sparsity"] = round(1.0 - kept / max(total, 1), 4)
    elif plan is None:
        plan, stream_report = planned(None, progress)
    plan = _canonical(plan, imported.aliases)
    if plan.params:
        exported = set(imported.torch_names.values())
        unknown = [n for n in plan.params if n not in exported and n in plan]
        if unknown:
            raise ValueError(f"plan sets parameters the exported model does not have: "
                             f"{unknown[:5]}")
        for name, value in plan.params.items():
            for relax_name in imported.params_of(name):  # none: the graph does not use it
                old = imported.weights[relax_name]
                if tuple(old.shape) != tuple(value.shape):
                    raise ValueError(f"{name}: plan sets shape {tuple(value.shape)}, the "
                                     f"model's parameter is {tuple(old.shape)}")
                imported.weights[relax_name] = np.asarray(value, dtype=old.dtype)
    # every read of a planned weight sees it masked, not only its layer's matmul / conv
    # (a weight also used transposed, as a scale, or tied to an embedding): the masked
    # reference is the model with the masks applied to its parameters
    for name, lp in plan.items():
        for relax_name in imported.params_of(name):
            w = imported.weights[relax_name]
            if w.shape == lp.mask.shape:
                imported.weights[relax_name] = (w * lp.mask).astype(w.dtype)
    return plan, TetrisPrune(plan, imported.weights, imported.torch_names), stream_report


def _kernel_timer(model: Any, example_inputs: Any, spec: PruningSpec, target: Any) -> Any:
    """How ``allocation="latency"`` times kernels: single layers and the dense model built
    for ``target`` with the spec's precision (:func:`tetris_tvm.latency.compiled_timer`)."""
    from tvm.target import codegen

    from .frontend import to_torch_inputs
    from .latency import compiled_timer, default_cache_path

    if target is None or example_inputs is None or not _runs_here(target):
        raise ValueError(
            f"latency allocation times kernels built for the target, so the target must run "
            f"on this machine (got {target}); plan on the machine you deploy to, then "
            "compile for the target with plan=")
    inputs = to_torch_inputs(example_inputs)
    options = {"quantize": spec.quantize, "dtype": spec.dtype, "progress": False}
    if spec.quantize:
        options.update(activations="dynamic", attention=spec.attention_precision)
    context = json.dumps({"target": str(target), "cpu": codegen.llvm_get_system_cpu(),
                          "threads": _threads(target), "quantize": spec.quantize,
                          "dtype": spec.dtype, "attention": spec.attention_precision},
                         sort_keys=True)

    def build_for_target(module: Any, inputs: Any, **kw: Any) -> Any:
        return compile(module, inputs, target, **kw)

    return compiled_timer(model, inputs, build_for_target, context=context, options=options,
                          cache_path=default_cache_path())


def _canonical(plan: Any, aliases: Mapping[str, str]) -> Any:
    """``plan`` keyed by the names the imported graph uses for tied parameters, with the
    other names as its aliases."""
    from dataclasses import replace

    if not aliases:
        return plan
    layers = {aliases.get(n, n): lp for n, lp in plan.layers.items()}
    params = {aliases.get(n, n): v for n, v in plan.params.items()}
    links = {a: k for a, k in {**plan.aliases, **aliases}.items() if k in layers and a != k}
    return replace(plan, layers=layers, params=params, aliases=links, _handles=[])


def compile(  # noqa: A001 - the public name of the API contract
    model: Any,
    example_inputs: Sequence[Any] | Any,
    target: Any = "llvm",
    sparsity: float | None = None,
    block_size: int | tuple[int, int] | None = None,
    plan: Any = None,
    tuning: str | os.PathLike[str] | None = None,
    *,
    spec: PruningSpec | None = None,
    tuning_fallback: bool = False,
    **options: Any,
) -> CompiledModel:
    """Prune ``model`` with TETRIS and compile it with block-sparse kernels.

    ``compile`` is :func:`lower` followed by :func:`build` (and, when the model runs here, a
    comparison of its outputs with the dense model's). What to prune and at which
    precision is a :class:`~tetris_tvm.PruningSpec` (``spec=``); ``sparsity``,
    ``block_size`` and the keyword options below that are spec fields replace the spec's.

    Args:
        model: a ``torch.nn.Module`` or ``torch.export.ExportedProgram``.
        example_inputs: the input tensors (shapes are compiled in, except a dynamic batch).
        target: ``"llvm"`` (this CPU), ``"cuda"``, a JSON target dict or a tvm Target.
        sparsity: fraction of blocks pruned per layer, in ``[0, 1)`` (default 0.75); ``0``
            compiles the dense model through the same path (the baseline for speedups).
        block_size: ``(out, in)`` channel block (default ``(32, 32)``).
        plan: a :class:`~tetris_tvm.PruningPlan` to use instead of computing one (its
            permutations are honoured; gathers stay where they cannot be folded). It fixes
            every layer's blocks: a ``sparsity`` or ``block_size`` that disagrees with it is
            an error.
        tuning: a work directory written by :func:`tetris_tvm.tune`; its checked records for
            this target replace the default schedules of the kernels they cover.
        tuning_fallback: when ``tuning`` has nothing for this target or model, warn and use
            the default schedules instead of raising ``ValueError``.
        dynamic_batch: compile dimension 0 of every input as symbolic, so one build runs any
            batch size (block-sparse kernels pad their rows to a multiple of 24 internally,
            so a fixed-batch build is faster; docs/results.md measures by how much).
            An int bounds the batch, which lets Relax plan all memory once. Half-precision
            kernels (``dtype``) need a fixed batch; dynamic builds keep those layers float32.
        allow_gathers: let computed plans permute every axis even where a runtime gather
            must stay (better retained L1, some gather cost).
        streams: channel streams shared by several layers (a residual stream): ``"auto"``
            gives each one permutation for all its layers when that retains more L1 and
            needs no runtime gather, ``"shared"`` also when it needs gathers (e.g. one at a
            model output), ``"separate"`` never. ``report.streams`` has the comparison.
        overrides: per-layer ``{pattern: {"sparsity", "block_size", "skip"}}``.
        prune_options: extra arguments for :func:`~tetris_tvm.prune_weight` (e.g. balanced).
        quantize: ``"int8"`` runs the Linear layers and convs on int8 operands (weights per
            output channel after pruning, inputs per row or image;
            :mod:`tetris_tvm.quantization`) with the target's dot-product instructions;
            ``cm.plan.quantization`` says how, and
            :func:`tetris_tvm.quantization.quantized_reference` is what the build computes.
        activations: ``"dynamic"`` (each row's own range, no calibration needed) or
            ``"static"`` (one range per layer from ``calibration``).
        dtype: ``"float16"`` or ``"bfloat16"`` stores the block-sparse linear and conv
            layers' weights in that type and runs them with half operands and float32
            accumulation (tensor cores for linears on CUDA); inputs, outputs, layers kept
            dense and every other op stay float32.
        calibration, importance, reconstruct, allocation: quality recovery for a computed
            plan, as in :func:`tetris_tvm.prune` (calibration batches are run through the
            torch model; the plan still only permutes what the graph can fold away). With
            calibration data the defaults are the full one-shot recipe: activation-aware
            importance, reconstruction and sensitivity allocation. ``cm.plan`` then carries
            the refitted weights, and the compiled model computes the model with
            ``cm.plan.params`` and the masks applied.
        progress: show progress bars for the recovery steps.
    """
    lowered = lower_model(model, example_inputs, target, sparsity, block_size, plan,
                          spec=spec, **options)
    cm = build(lowered, tuning, tuning_fallback=tuning_fallback)
    if _runs_here(lowered.target):
        _measure_output_change(model, cm, example_inputs)
    return cm


def build(lowered: LoweredModel, tuning: str | os.PathLike[str] | None = None, *,
          tuning_fallback: bool = False) -> CompiledModel:
    """The second stage of :func:`compile`: schedule a :func:`lower` result (the tuning
    records of ``tuning`` where they apply, the default schedule rules elsewhere) and build
    it. :func:`tetris_tvm.tune` takes the same lowered model, so tuned and built kernels
    cannot disagree."""
    import tvm

    if not isinstance(lowered, LoweredModel):
        raise ValueError(f"build takes what tetris_tvm.lower returns, got "
                         f"{type(lowered).__name__}")
    tgt, mod = lowered.target, lowered.mod
    report = copy.copy(lowered.report)
    if tuning is not None:
        mod, report.tuned_kernels = apply_tuning(mod, tgt, tuning, fallback=tuning_fallback)
    mod = schedule_module(mod, tgt)  # the rest: default schedules; then build-time marks
    executable = tvm.compile(mod, target=tgt)
    cm = CompiledModel(executable, tgt, lowered.plan, report, lowered.meta, ir=mod)
    if tgt.kind.name == "cuda" and not tvm.cuda(0).exist:
        import warnings

        warnings.warn("compiled for CUDA, but this machine has no CUDA GPU: export the model "
                      "and run it on a machine with one (calling it here fails)", stacklevel=3)
    return cm


def _runs_here(target: Any) -> bool:
    """Whether a model built for ``target`` can run on this machine (same architecture and,
    for llvm, this CPU or a generic one): only then does compile call it."""
    import platform

    from tvm.target import codegen

    if target.kind.name != "llvm":
        return False
    attrs = target.attrs
    triple = str(attrs.get("mtriple", "") or "")
    if triple and triple.split("-")[0] not in (platform.machine(), "x86_64"
                                               if platform.machine() == "amd64" else ""):
        return False
    cpu = str(attrs.get("mcpu", "") or "")
    return cpu in ("", "generic", codegen.llvm_get_system_cpu()) and not attrs.get("mattr")


WARN_COSINE = 0.98
"""compile warns when its outputs on the example inputs have a lower cosine to the dense
model's (pruning without recovery data can cost a model most of its accuracy)."""


def _measure_output_change(model: Any, cm: CompiledModel, example_inputs: Any) -> None:
    """Record in ``cm.report`` how far the compiled outputs are from the dense torch model's
    on the example inputs, and warn, with the way out, when they are far."""
    import torch

    from .frontend import to_torch_inputs

    if not isinstance(model, torch.nn.Module):
        return
    inputs = to_torch_inputs(example_inputs)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            dense = model(*inputs)
    except Exception:  # noqa: BLE001 - the comparison is a courtesy; the build stands
        return
    finally:
        for m, training in modes.items():
            m.training = training
    want = [t.float().reshape(-1) for t in _float_tensors(dense)]
    got = [t.float().reshape(-1) for t in _float_tensors(cm(*inputs))]
    if not want or len(want) != len(got):
        return
    a, b = torch.cat(got), torch.cat(want)
    finite = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[finite], b[finite]
    norm = float(b.norm())
    if norm == 0.0 or a.numel() == 0:
        return
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    change = {"cosine": cosine, "relative_error": float((a - b).norm()) / norm}
    cm.report.output_change = change
    if cosine < WARN_COSINE:
        import warnings

        warnings.warn(
            f"the compiled model's outputs on the example inputs are far from the dense "
            f"model's (cosine {cosine:.3f}, relative error {change['relative_error']:.2f}): "
            f"{_way_out(cm.plan)}; check quality on held-out data", stacklevel=3)


def _way_out(plan: Any) -> str:
    """What to try next when a build's outputs are far from the dense model's."""
    settings = getattr(plan, "settings", {}) or {}
    if settings.get("finetune"):
        return ("the fine-tuned plan has not recovered the dense outputs: train longer, lower "
                "the sparsity or use smaller blocks")
    if settings.get("calibration_batches"):
        return ("one-shot recovery did not close the gap at this sparsity: fine-tune with "
                "tetris_tvm.finetune, lower the sparsity or use smaller blocks")
    return ("pruning at this sparsity without recovery loses accuracy. Pass calibration="
            "[example batches] (one-shot recovery, minutes), fine-tune with "
            "tetris_tvm.finetune, or lower the sparsity")


def _float_tensors(out: Any) -> list[Any]:
    """The floating-point tensors of a model output (tensors, tuples, dicts, ModelOutputs)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict) or hasattr(out, "values") and not isinstance(out, (list, tuple)):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _float_tensors(item)]
    return []


def _report(plan: Any, lowered: Sequence[Any], gathers: int, skipped: list) -> Report:
    rows = []
    by_name = {layer.name: layer for layer in lowered}
    for name, lp in plan.items():
        low = by_name.get(name)
        weights = int(lp.mask.size)
        kept = int(lp.mask.sum())
        rows.append(
            {
                "name": name,
                "shape": list(lp.mask.shape),
                "block": list(lp.block_size[:2]),
                "kept_blocks": lp.kept_blocks,
                "blocks": lp.n_blocks,
                "retained_l1": float(lp.retained_l1),
                "density": kept / weights if weights else 1.0,
                "weights": weights,
                "weights_kept": kept,
                "flops": weights,  # per output position; relative figures only
                "kernel": low.kernel if low is not None else "dense (not lowered)",
                "fused": low.fused if low is not None else "",
                "precision": low.precision if low is not None else "float32",
                "perm_out": not bool(np.array_equal(lp.perms[0], np.arange(lp.perms[0].size))),
                "perm_in": not bool(np.array_equal(lp.perms[1], np.arange(lp.perms[1].size))),
            }
        )
    return Report(layers=rows, runtime_gathers=int(gathers), skipped=list(skipped))
