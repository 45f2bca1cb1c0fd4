"""torch.export -> Relax, with the weights kept as named parameters of ``main``.

The Relax passes of :mod:`tetris_tvm.passes` need to know which ``main`` parameter is which torch
weight (to match the PruningPlan by ``state_dict`` name) and the weights' values. We keep the
weights as function parameters (TVM's ``keep_params_as_input`` convention: the first
``num_input`` parameters are the model inputs) and return their values and torch names beside the
module; :func:`bind_weights` turns whatever weights are left into constants at the end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._compat import quiet_torch_export

__all__ = [
    "BindWeights", "ImportedModel", "import_model", "bind_weights", "max_batch",
    "to_torch_inputs",
]


@dataclass
class ImportedModel:
    """A Relax module whose ``main`` takes ``(*inputs, *weights)``, plus the weights.

    Attributes:
        mod: the IRModule (``main`` has ``num_input`` model inputs, then one parameter per weight).
        weights: weight values keyed by the Relax parameter name (``"p_fc1_weight"``).
        torch_names: Relax parameter name -> torch ``state_dict`` name (``"fc1.weight"``).
        input_names: names of the model inputs, in order.
        output_is_tuple: whether the torch model returned a tuple/list.
        input_specs: per input, its name, shape (None for the dynamic batch), dtype and the
            batch bound (:class:`tetris_tvm.runtime.InputSpec`'s dict form).
        aliases: a parameter the model holds under several names (tied weights): each other
            name -> the one ``torch_names`` uses for it (:func:`tetris_tvm.plan.tied_names`).
        kept_attention: ``scaled_dot_product_attention`` was imported as ``nn.attention``.
    """

    mod: Any
    weights: dict[str, np.ndarray]
    torch_names: dict[str, str]
    input_names: list[str]
    output_is_tuple: bool = False
    input_specs: list[dict[str, Any]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    kept_attention: bool = False

    def params_of(self, torch_name: str) -> list[str]:
        """The relax parameters holding the torch parameter ``torch_name`` (a tied weight
        may be several)."""
        return [r for r, t in self.torch_names.items() if t == torch_name]


def to_torch_inputs(example_inputs: Any) -> tuple[Any, ...]:
    """Example inputs as a tuple of torch tensors (numpy arrays are converted)."""
    import torch

    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise ValueError("example_inputs must be a tensor or a non-empty tuple of tensors "
                         f"(what the model's forward takes), got {example_inputs!r:.60}")
    out = []
    for i, x in enumerate(example_inputs):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"example input {i} must be a torch tensor or numpy array, got {type(x)}"
            )
        out.append(x)
    return tuple(out)


def max_batch(dynamic_batch: bool | int) -> int | None:
    """The largest batch of a ``dynamic_batch`` option (None: unbounded or not dynamic)."""
    if isinstance(dynamic_batch, bool):
        return None
    if int(dynamic_batch) < 1:
        raise ValueError(f"dynamic_batch must be True, False or a batch size >= 1, got "
                         f"{dynamic_batch!r}")
    return int(dynamic_batch)


def import_model(
    model: Any,
    example_inputs: Sequence[Any],
    *,
    dynamic_batch: bool | int = False,
    keep_attention: bool = False,
) -> ImportedModel:
    """Export ``model`` with torch.export and import it into Relax.

    Args:
        model: a ``torch.nn.Module`` (put in eval mode) or a ``torch.export.ExportedProgram``.
        example_inputs: tensors with the shapes to compile for.
        dynamic_batch: make dimension 0 of every input symbolic (``batch``); an int is the
            largest batch, which lets Relax plan all memory once for that size.
        keep_attention: import ``scaled_dot_product_attention`` as Relax's ``nn.attention``
            (for :class:`tetris_tvm.passes.LowerAttention`) instead of torch's op-by-op
            decomposition, when every call in the model is one the fused kernel computes
            (:func:`keepable_attention`); otherwise the model imports as without it.
    """
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    inputs = to_torch_inputs(example_inputs)
    if isinstance(model, torch.export.ExportedProgram):
        exported = model
    else:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(
                f"model must be a torch.nn.Module or ExportedProgram, got {type(model)}"
            )
        dynamic_shapes = None
        traced = inputs
        if dynamic_batch:
            largest = max_batch(dynamic_batch)
            batch = torch.export.Dim("batch", min=1, max=largest or 1 << 16)
            dynamic_shapes = tuple({0: batch} for _ in inputs)
            # torch.export specialises a batch of 1; trace with 2 (the model is the same)
            traced = tuple(torch.cat([x, x]) if x.ndim and x.shape[0] == 1 else x
                           for x in inputs)
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()  # exported in eval mode; the caller's model keeps its own mode
            with torch.no_grad(), quiet_torch_export():
                exported = torch.export.export(model, traced, dynamic_shapes=dynamic_shapes)
        except Exception as e:  # torch raises many kinds; all mean "could not export"
            shapes = ", ".join(f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
                               for x in inputs)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(
                f"torch.export could not run {type(model).__name__} on the example inputs "
                f"({shapes}): {first}\n"
                "hint: the inputs must be what forward() takes, and the model traceable with "
                "fixed control flow; or compile a torch.export.ExportedProgram you made."
            ) from None
        finally:
            for m, training in modes.items():
                m.training = training

    try:
        with quiet_torch_export():  # TVM's importer runs torch's decompositions
            kept = keep_attention and keepable_attention(exported)
            if kept:
                table = torch.export.default_decompositions()
                for op in [op for op in table if "scaled_dot_product" in str(op)]:
                    del table[op]
                mod = from_exported_program(
                    exported.run_decompositions(table), keep_params_as_input=True,
                    unwrap_unit_return_tuple=True, run_ep_decomposition=False,
                    custom_convert_map={_SDPA: _attention_to_relax})
            else:
                mod = from_exported_program(exported, keep_params_as_input=True,
                                            unwrap_unit_return_tuple=True)
    except AssertionError as e:  # TVM 0.27's importer asserts on ops it does not know
        text = str(e)
        if "Unsupported function types" not in text:
            raise
        ops = ", ".join(re.findall(r"'([\w.]+?)(?:\.default)?'", text)) or text
        raise ValueError(f"the model uses ops TVM's importer does not support: {ops}; rewrite "
                         "them with supported ones (e.g. torch.max(x, dim).values for amax)"
                         ) from None
    from tvm import relax

    mod, params = relax.frontend.detach_params(mod)
    func = mod["main"]
    if dynamic_batch and not max_batch(dynamic_batch) and func.attrs is not None:
        # no bound: memory is allocated per call (a planner bound of 65536 rows would
        # reserve tens of GB for a transformer's activations)
        if "tir_var_upper_bound" in func.attrs:
            func = func.without_attr("tir_var_upper_bound")
            mod["main"] = func
    num_input = int(func.attrs["num_input"])
    weight_vars = func.params[num_input:]
    values = params.get("main", [])
    if len(values) != len(weight_vars):
        raise RuntimeError(
            f"internal: {len(weight_vars)} weight parameters but {len(values)} values"
        )

    sig = exported.graph_signature
    relax_to_torch: dict[str, str] = {}
    for spec in sig.input_specs:
        target = getattr(spec, "target", None)
        if target is not None:
            relax_to_torch[spec.arg.name] = target
    from .plan import tied_names

    aliases = tied_names(model) if isinstance(model, torch.nn.Module) else {}
    weights: dict[str, np.ndarray] = {}
    torch_names: dict[str, str] = {}
    for var, value in zip(weight_vars, values, strict=True):
        name = var.name
        weights[name] = value.numpy()
        torch_name = relax_to_torch.get(name, name)
        torch_names[name] = aliases.get(torch_name, torch_name)
    input_names = [v.name for v in func.params[:num_input]]
    specs = [_input_spec(v, max_batch(dynamic_batch) if dynamic_batch else None)
             for v in func.params[:num_input]]
    out_spec = exported.call_spec.out_spec
    is_tuple = out_spec is not None and out_spec.num_leaves > 1
    return ImportedModel(mod, weights, torch_names, input_names, bool(is_tuple), specs, aliases,
                         kept)


def _input_spec(var: Any, bound: int | None) -> dict[str, Any]:
    from tvm import tirx

    sinfo = var.ty
    shape = [int(d) if isinstance(d, tirx.IntImm) else None for d in sinfo.shape.values]
    return {"name": var.name, "shape": shape, "dtype": str(sinfo.dtype), "max_dim": bound}


def bind_weights(mod: Any, weights: dict[str, np.ndarray]) -> Any:
    """Bind the named weight parameters of ``main`` as constants (BindParams)."""
    return BindWeights(weights)(mod)


def BindWeights(weights: dict[str, np.ndarray]) -> Any:  # noqa: N802 - a Pass, named as one
    """A Pass binding the weights still parameters of ``main`` as constants (BindParams),
    whichever of them earlier passes left (a pruned layer's weight may already be a constant)."""
    import tvm
    from tvm import relax

    def bind(mod: Any, _ctx: Any) -> Any:
        present = {v.name for v in mod["main"].params}
        values = {k: tvm.runtime.tensor(v) for k, v in weights.items() if k in present}
        return relax.transform.BindParams("main", values)(mod)

    return tvm.transform.module_pass(bind, opt_level=0, name="BindWeights")


_SDPA = "scaled_dot_product_attention.default"


def _sdpa_operands(node: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """``(q, k, v, mask, options)`` of an SDPA call node (fx nodes; options as torch's
    defaults fill them)."""
    names = ("attn_mask", "dropout_p", "is_causal")
    defaults = (None, 0.0, False)
    options = {n: node.args[3 + i] if len(node.args) > 3 + i else node.kwargs.get(n, dflt)
               for i, (n, dflt) in enumerate(zip(names, defaults, strict=True))}
    options["scale"] = node.kwargs.get("scale")
    options["enable_gqa"] = node.kwargs.get("enable_gqa", False)
    q, k, v = node.args[:3]
    return q, k, v, options.pop("attn_mask"), options


def keepable_attention(exported: Any) -> bool:
    """Whether ``exported`` calls ``scaled_dot_product_attention`` only in the form the fused
    kernel computes: 4-D float32 q, k, v with static shapes and one key/value head per query
    head, no dropout, not causal, no mask or a bool / float32 mask (a dense bias of rank <=
    4). False when it has no such call."""
    import torch

    calls = [n for n in exported.graph.nodes
             if n.op == "call_function" and "scaled_dot_product" in str(n.target)]
    if not calls:
        return False

    def static(val: Any) -> bool:
        return isinstance(val, torch.Tensor) and all(isinstance(d, int) for d in val.shape)

    for node in calls:
        if node.target is not torch.ops.aten.scaled_dot_product_attention.default:
            return False
        q, k, v, mask, options = _sdpa_operands(node)
        vals = [getattr(t, "meta", {}).get("val") for t in (q, k, v)]
        if not all(static(t) and t.ndim == 4 and t.dtype == torch.float32 for t in vals):
            return False
        if vals[1].shape[:2] != vals[0].shape[:2] or vals[2].shape[:2] != vals[0].shape[:2]:
            return False
        if options["dropout_p"] or options["is_causal"] or options["enable_gqa"]:
            return False
        if mask is not None:
            m = getattr(mask, "meta", {}).get("val")
            if not static(m) or m.ndim > 4 or m.dtype not in (torch.bool, torch.float32):
                return False
    return True


def _attention_to_relax(node: Any, importer: Any) -> Any:
    """Converter of ``scaled_dot_product_attention`` (``(b, h, s, d)`` operands) into
    ``nn.attention`` (``(b, s, h, d)``, transposed both ways): a bool mask becomes a
    ``0 / -inf`` bias."""
    from tvm import relax

    bb = importer.block_builder
    q, k, v, mask, options = _sdpa_operands(node)

    def to_bshd(arg: Any) -> Any:  # (LowerAttention cancels it against the model's own)
        return bb.emit(relax.op.permute_dims(importer.env[arg], [0, 2, 1, 3]))

    bias = None
    if mask is not None:
        bias = importer.env[mask]
        ndim = len(bias.ty.shape.values)
        if ndim < 4:
            shape = [1] * (4 - ndim) + [int(d) for d in bias.ty.shape.values]
            bias = bb.emit(relax.op.reshape(bias, shape))
        if str(bias.ty.dtype) == "bool":
            bias = bb.emit(relax.op.where(bias, relax.const(0.0, "float32"),
                                          relax.const(float("-inf"), "float32")))
    out = bb.emit(relax.op.nn.attention(to_bshd(q), to_bshd(k), to_bshd(v), bias,
                                        scale=options["scale"]))
    return bb.emit(relax.op.permute_dims(out, [0, 2, 1, 3]))
