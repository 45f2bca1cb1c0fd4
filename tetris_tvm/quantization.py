"""int8 quantization, torch side: what an int8 build computes, and its reference.

An int8 build (``compile(..., quantize="int8")``) runs every pruned (or dense) Linear layer
and conv (groups=1) on int8 operands: the weight quantized symmetrically per output channel
after pruning (only kept blocks are stored), the layer's input quantized per row (a token;
for a conv, a whole image) into the dot-product instruction's range, either from each
row's own range (``activations="dynamic"``) or with one scale and zero point per layer
calibrated on example inputs (``"static"``); int32
accumulation, and dequantization, bias and activation in float32. Attention's two matmuls
run int8 too where the model calls ``scaled_dot_product_attention`` (``attention="int8"``,
the default of an int8 build; :func:`fake_quantize_attention` says how); softmax, layer norms,
pooling and grouped convs stay float32.

The **reference** of an int8 build is the masked model with the same fake quantization
(:func:`quantized_reference`): each quantized layer's weight replaced by its dequantized int8
values and its input rounded the way the kernels round. The compiled model equals it up to
the order of float32 operations (a value on a rounding boundary may land one step apart).

The settings live in ``plan.quantization`` (a dict, saved with the plan)::

    {"scheme": "int8", "activations": "dynamic" | "static", "dot": "vnni",
     "qmin": 0, "qmax": 255,                      # the activations' integer range
     "layers": {name: {"scale": s, "zero": z} | {}},   # static: per layer; dynamic: {}
     "float32": {name: reason},                   # planned layers that stay float32
     "attention": "int8" | "float32", "widths": [16, 8, 4]}   # the dot's lane counts
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .calibration import as_batches, run_batch

__all__ = [
    "ACTIVATION_MODES",
    "QUANTIZE",
    "calibrate_ranges",
    "fake_quantize_attention",
    "fake_quantize_rows",
    "int8_attention_sizes_fit",
    "int8_settings",
    "quantize_weight",
    "quantized_reference",
    "static_params",
    "weight_fake_quant",
]

QUANTIZE = (None, "int8")
ACTIVATION_MODES = ("dynamic", "static")


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: ``(q, scale)`` with ``w ~= q * scale[:, None]``,
    ``q`` in [-127, 127] (rows of zeros get scale 1)."""
    w = np.asarray(w, dtype=np.float32).reshape(w.shape[0], -1)
    amax = np.abs(w).max(axis=1) if w.size else np.zeros(w.shape[0], np.float32)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.floor(w / scale[:, None] + np.float32(0.5)), -127, 127).astype(np.int8)
    return q, scale


def weight_fake_quant(w: np.ndarray) -> np.ndarray:
    """``w`` as int8 per output channel, dequantized (what an int8 build computes with)."""
    q, scale = quantize_weight(w)
    return (q.astype(np.float32) * scale[:, None]).reshape(np.shape(w))


def static_params(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, int]:
    """Scale and zero point that map ``[min(lo, 0), max(hi, 0)]`` onto ``[qmin, qmax]``
    (the same arithmetic as the kernels' dynamic rows, in float32)."""
    f = np.float32
    lo, hi = f(min(lo, 0.0)), f(max(hi, 0.0))
    span = (hi - lo) / f(qmax - qmin)
    scale = span if span > 0 else f(1.0)
    zero = f(qmin) - np.floor(lo / scale + f(0.5))
    return float(scale), int(np.clip(zero, qmin, qmax))


def fake_quantize_rows(x: Any, qmin: int, qmax: int,
                       static: tuple[float, int] | None = None) -> Any:
    """``x`` (a torch tensor, rows = all but the last axis) quantized per row and back, with
    the kernels' arithmetic: ``q = clip(floor(x * (1 / s) + 0.5) + z)``, ``x' = s * (q - z)``."""
    import torch

    f32 = torch.float32
    xf = x.to(f32)
    if static is None:
        lo = torch.minimum(xf.amin(dim=-1, keepdim=True), torch.zeros((), dtype=f32))
        hi = torch.maximum(xf.amax(dim=-1, keepdim=True), torch.zeros((), dtype=f32))
        nan = torch.isnan(xf).any(dim=-1, keepdim=True)
        span = (hi - lo) / float(qmax - qmin)
        scale = torch.where(span > 0, span, torch.ones_like(span))
        scale = torch.where(nan, torch.full_like(scale, float("nan")), scale)
        zero = (float(qmin) - torch.floor(lo / scale + 0.5)).clamp(qmin, qmax)
        zero = torch.nan_to_num(zero, nan=float(qmin))
    else:
        scale = torch.tensor(static[0], dtype=f32)
        zero = torch.tensor(float(static[1]), dtype=f32)
    inv = 1.0 / scale
    q = (torch.floor(xf * inv + 0.5) + zero).clamp(qmin, qmax)
    return ((q - zero) * scale).to(x.dtype)


def int8_settings(model: Any, plan: Any, dot: Any, activations: str,
                  ranges: Mapping[str, tuple[float, float]] | None = None, *,
                  attention: str = "float32") -> dict[str, Any]:
    """``plan.quantization`` for an int8 build with the dot-product instruction ``dot``
    (:class:`tetris_tvm.kernels.int8.Dot`): which planned layers run int8 (Linear layers
    and groups=1 convs whose blocks the kernels take), for static activations each one's
    scale and zero, and the precision of attention's matmuls (``"int8"`` or ``"float32"``)."""
    import torch

    if activations not in ACTIVATION_MODES:
        raise ValueError(f"activations must be one of {ACTIVATION_MODES}, got {activations!r}")
    modules = dict(model.named_modules(remove_duplicate=False))
    layers: dict[str, dict[str, Any]] = {}
    float32: dict[str, str] = {}
    for name, lp in plan.items():
        module = modules.get(name.rsplit(".", 1)[0] if "." in name else "")
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            float32[name] = "int8 runs Linear and Conv2d layers"
            continue
        if isinstance(module, torch.nn.Conv2d) and not dot.convs:
            float32[name] = f"int8 with {dot.name} runs Linear layers"
            continue
        if isinstance(module, torch.nn.Conv2d) and (module.groups != 1
                                                    or module.padding_mode != "zeros"):
            float32[name] = "int8 runs convs with groups=1 and zero padding"
            continue
        bn = int(lp.block_size[0])
        if bn % min(dot.widths) and bn != lp.shape[0]:
            float32[name] = f"int8 blocks need rows in multiples of {min(dot.widths)}"
            continue
        columns = int(dot.columns)
        k = int(np.prod(lp.shape[1:]))
        if min(int(lp.block_size[1]), k) % columns or k % columns:
            float32[name] = f"int8 blocks need columns in multiples of {columns} ({dot.name})"
            continue
        entry: dict[str, Any] = {}
        if activations == "static":
            if ranges is None or name not in ranges:
                raise ValueError(f"static activations need calibrated ranges; none for {name}")
            scale, zero = static_params(*ranges[name], dot.qmin, dot.qmax)
            entry = {"scale": scale, "zero": zero}
        layers[name] = entry
    return {"scheme": "int8", "activations": activations, "dot": dot.name,
            "qmin": int(dot.qmin), "qmax": int(dot.qmax), "layers": layers,
            "float32": float32, "attention": attention, "widths": list(dot.widths)}


def calibrate_ranges(model: Any, plan: Any, batches: Iterable[Any],
                     names: Iterable[str]) -> dict[str, tuple[float, float]]:
    """The smallest and largest input value each layer ``names`` sees when the masked model
    (``plan`` applied to a copy) runs ``batches``."""
    import torch

    work = plan.apply(copy.deepcopy(model).eval(), keep=False)
    modules = dict(work.named_modules(remove_duplicate=False))
    ranges: dict[str, list[float]] = {}
    mask: list[Any] = [None]  # the current batch's real tokens
    handles = []
    for name in names:
        module = modules[name.rsplit(".", 1)[0]]

        def record(_m: Any, inputs: Any, name: str = name) -> None:
            x = inputs[0].detach()
            if mask[0] is not None and x.shape[:2] == mask[0].shape:
                x = x[mask[0]]  # real tokens only, not padding
            lo, hi = float(x.min()), float(x.max())
            old = ranges.get(name)
            ranges[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]

        handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            for i, batch in enumerate(as_batches(batches, "calibration")):
                mask[0] = batch.token_mask
                run_batch(work, batch, i)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in ranges]
    if missing:
        raise ValueError(f"calibration never reached {missing[:3]}: the batches must run "
                         "through those layers")
    return {n: (v[0], v[1]) for n, v in ranges.items()}


def quantized_reference(model: Any, plan: Any) -> Any:
    """The reference of an int8 build: a copy of ``model`` with the plan's weights and masks
    applied, each quantized layer's weight fake-quantized per output channel, and its input
    fake-quantized per row as the kernels do. Without ``plan.quantization`` it is the masked
    reference."""
    import torch

    work = plan.apply(copy.deepcopy(model).eval(), keep=False)
    settings = getattr(plan, "quantization", None)
    if not settings:
        return work
    modules = dict(work.named_modules(remove_duplicate=False))
    qmin, qmax = int(settings["qmin"]), int(settings["qmax"])
    for name, entry in settings["layers"].items():
        module = modules[name.rsplit(".", 1)[0]]
        with torch.no_grad():
            w = module.weight.detach().cpu().numpy()
            module.weight.copy_(torch.from_numpy(weight_fake_quant(w)).to(module.weight.dtype))
        static = (entry["scale"], entry["zero"]) if entry else None

        def quantize_input(m: Any, inputs: Any, static: Any = static) -> Any:
            x = inputs[0]
            if isinstance(m, torch.nn.Conv2d):  # a conv quantizes each image as one row
                rows = fake_quantize_rows(x.reshape(x.shape[0], -1), qmin, qmax, static)
                return (rows.reshape(x.shape), *inputs[1:])
            return (fake_quantize_rows(x, qmin, qmax, static), *inputs[1:])

        module.register_forward_pre_hook(quantize_input)
    if settings.get("attention") == "int8":
        _fake_quantize_attention_calls(work, qmin, qmax, settings.get("widths", [4]))
    return work


def fake_quantize_attention(q: Any, k: Any, v: Any, attn_mask: Any = None,
                            dropout_p: float = 0.0, is_causal: bool = False,
                            scale: float | None = None, *, qmin: int, qmax: int) -> Any:
    """``scaled_dot_product_attention`` (``(batch, heads, seq, dim)`` operands) with the int8
    attention kernel's arithmetic: keys int8 per row and values int8 per column (symmetric,
    ``[-127, 127]``), queries per row into ``[qmin, qmax]`` with a zero point, scores and
    softmax in float32, ``exp(s - max)`` rounded to steps of ``1 / qmax`` and normalised
    after the product with the values. A row with every score ``-inf`` gives 0."""
    import torch

    f32 = torch.float32

    def symmetric(x: Any, dim: int) -> Any:
        amax = x.abs().amax(dim=dim, keepdim=True) / 127.0
        s = torch.where(amax > 0, amax, torch.ones_like(amax))
        return torch.floor(x * (1.0 / s) + 0.5).clamp(-127, 127) * s

    q, k, v = q.to(f32), k.to(f32), v.to(f32)
    scale = 1.0 / float(q.shape[-1]) ** 0.5 if scale is None else float(scale)
    scores = fake_quantize_rows(q, qmin, qmax) @ symmetric(k, -1).transpose(-1, -2) * scale
    if attn_mask is not None:
        bias = attn_mask if attn_mask.dtype != torch.bool else torch.where(
            attn_mask, torch.zeros((), dtype=f32), torch.full((), float("-inf"), dtype=f32))
        scores = scores + bias
    top = scores.amax(dim=-1, keepdim=True)
    e = torch.exp(scores - torch.where(torch.isinf(top), torch.zeros_like(top), top))
    total = e.sum(dim=-1, keepdim=True)
    p = torch.floor(e * float(qmax) + 0.5).clamp(0, qmax) / float(qmax)
    vs = v.abs().amax(dim=-2, keepdim=True) / 127.0
    vs = torch.where(vs > 0, vs, torch.ones_like(vs))
    vq = torch.floor(v / vs + 0.5).clamp(-127, 127)
    out = (p @ (vq * vs)) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, out, torch.zeros_like(out))


def int8_attention_sizes_fit(dim: int, kv_len: int, v_dim: int, widths: Iterable[int]) -> bool:
    """Whether the int8 attention kernel takes these sizes: ``dim`` and ``kv_len`` multiples
    of 4 (the dot's depth) and one of the dot's lane counts ``widths`` dividing ``kv_len`` and
    one dividing ``v_dim``."""
    widths = list(widths)
    return (dim % 4 == 0 and kv_len % 4 == 0 and any(kv_len % w == 0 for w in widths)
            and any(v_dim % w == 0 for w in widths))


def _fake_quantize_attention_calls(model: Any, qmin: int, qmax: int, widths: list[int]) -> None:
    """While ``model`` runs, its ``scaled_dot_product_attention`` calls that the int8 kernel
    takes (the import keeps them: 4-D float32, no dropout, not causal; sizes in multiples of
    4 and of one of the dot's lane counts) compute :func:`fake_quantize_attention`."""
    import torch

    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def sdpa(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False
             ) -> Any:
        if (q.ndim != 4 or dropout_p or is_causal or enable_gqa or q.dtype != torch.float32
                or k.shape[1] != q.shape[1]
                or not int8_attention_sizes_fit(q.shape[-1], k.shape[-2], v.shape[-1], widths)):
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                            is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return fake_quantize_attention(q, k, v, attn_mask, scale=scale, qmin=qmin, qmax=qmax)

    def swap_in(_m: Any, _inputs: Any) -> None:
        functional.scaled_dot_product_attention = sdpa

    def swap_out(_m: Any, _inputs: Any, _output: Any) -> None:
        functional.scaled_dot_product_attention = original

    model.register_forward_pre_hook(swap_in)
    model.register_forward_hook(swap_out, always_call=True)
