"""Calibration data for pruning: checked example batches, per-layer input statistics.

A calibration set is an iterable of example inputs, each one what the model's ``forward``
takes: a tensor, a tuple of tensors, or a dict of keyword tensors (a tokenizer's output).
When a batch carries an ``attention_mask`` (a dict key), padding positions are left out of
every statistic, so padded batches calibrate like unpadded ones.

For every pruned ``nn.Linear`` / ``nn.Conv2d`` this module accumulates the Gram matrix of the
layer's inputs, ``H = X^T X`` over all calibration rows (a row is one token of a Linear, one
output pixel's receptive field of a Conv2d, with a trailing 1 when the layer has a bias).
Importance scores (:mod:`tetris_tvm.importance`) read its diagonal; reconstruction
(:mod:`tetris_tvm.reconstruct`) solves with all of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CalibrationBatch",
    "as_batches",
    "layer_modules",
    "layer_rows",
    "InputGram",
    "collect_grams",
    "run_batch",
    "capture_inputs",
    "layer_stages",
    "model_output",
]


@dataclass
class CalibrationBatch:
    """One checked calibration input: positional and keyword tensors, and the rows to keep."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    token_mask: Any = None  # bool (batch, seq) or None

    @property
    def size(self) -> int:
        first = self.args[0] if self.args else next(iter(self.kwargs.values()))
        return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


def _tensor(x: Any, where: str) -> Any:
    import torch

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{where}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: has NaN or Inf values")
    return x


def as_batches(calibration: Any, name: str = "calibration") -> list[CalibrationBatch]:
    """Check and normalise a calibration set (see the module docstring).

    Raises ValueError naming what was expected when the set is empty, an item is not a
    tensor / tuple / dict of tensors, or a float tensor holds NaN or Inf.
    """
    import torch

    if calibration is None:
        raise ValueError(f"{name} is None: give an iterable of example inputs")
    if isinstance(calibration, (torch.Tensor, np.ndarray)):
        raise ValueError(
            f"{name} is a single tensor: give an iterable of batches, e.g. [x1, x2] or "
            "list(x.split(32))"
        )
    if isinstance(calibration, Mapping):
        calibration = [calibration]
    if not isinstance(calibration, Iterable):
        raise ValueError(f"{name} must be an iterable of example inputs, got "
                         f"{type(calibration).__name__}")
    batches = []
    for i, item in enumerate(calibration):
        where = f"{name} batch {i}"
        if isinstance(item, CalibrationBatch):
            batches.append(item)
        elif isinstance(item, Mapping):
            kwargs = {k: _tensor(v, f"{where}[{k!r}]") for k, v in item.items()}
            mask = kwargs.get("attention_mask")
            batches.append(CalibrationBatch((), kwargs, None if mask is None else mask.bool()))
        elif isinstance(item, (tuple, list)):
            if not item:
                raise ValueError(f"{where} is an empty tuple: expected the model's inputs")
            args = tuple(_tensor(v, f"{where}[{j}]") for j, v in enumerate(item))
            batches.append(CalibrationBatch(args))
        else:
            batches.append(CalibrationBatch((_tensor(item, where),)))
    if not batches:
        raise ValueError(f"{name} is empty: give at least one batch of example inputs")
    return batches


def run_batch(model: Any, batch: CalibrationBatch, index: int = 0) -> Any:
    """``model(*args, **kwargs)`` without gradients; a model error becomes a ValueError."""
    import torch

    try:
        with torch.no_grad():
            return model(*batch.args, **batch.kwargs)
    except _StopForward:
        raise
    except Exception as e:  # the model decides what it accepts; report it in our words
        shapes = [tuple(a.shape) for a in batch.args] + [
            f"{k}={tuple(v.shape)}" for k, v in batch.kwargs.items()
        ]
        raise ValueError(
            f"calibration batch {index}: the model could not run it (inputs {shapes}): "
            f"{type(e).__name__}: {e}. Give batches shaped like the model's example inputs."
        ) from e


def layer_modules(model: Any, names: Iterable[str]) -> dict[str, Any]:
    """The ``nn.Linear`` / ``nn.Conv2d`` module owning each weight name (``"fc1.weight"``)."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner not in modules:
            raise ValueError(f"{name}: the model has no module {owner!r}")
        out[name] = modules[owner]
    return out


def layer_rows(module: Any, x: Any, token_mask: Any = None) -> Any:
    """The 2-D float32 input rows a layer multiplies by its (flattened) weight.

    Linear: the input's last axis (positions where ``token_mask`` is False are dropped when
    the input's leading axes are the mask's shape). Conv2d: unfolded receptive fields, in the
    order of ``weight.reshape(O, -1)``. A column of ones is appended when the layer has a bias.
    """
    import torch
    import torch.nn.functional as F

    x = x.detach().float()
    if isinstance(module, torch.nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            padding = module._reversed_padding_repeated_twice
            if module.padding_mode != "zeros" or any(padding):
                raise ValueError("reconstruction supports zero-padded convs with numeric padding")
            padding = 0
        else:
            padding = module.padding
        cols = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        if token_mask is not None and tuple(x.shape[:-1]) == tuple(token_mask.shape):
            x = x[token_mask]
        rows = x.reshape(-1, x.shape[-1])
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


@dataclass
class InputGram:
    """``H = sum of row^T row`` over a layer's calibration inputs (float64), and the row count."""

    gram: np.ndarray
    rows: int
    has_bias: bool

    @property
    def mean_square(self) -> np.ndarray:
        """Mean square of every input column (bias column excluded)."""
        d = np.diag(self.gram) / max(self.rows, 1)
        return d[:-1] if self.has_bias else d


def model_output(out: Any) -> Any:
    """The tensor a model's output stands for: itself, ``last_hidden_state`` (Hugging Face
    encoders), ``logits``, or the first tensor of a tuple, list or dict."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for attr in ("last_hidden_state", "logits"):
        if getattr(out, attr, None) is not None:
            return getattr(out, attr)
    items = list(out.values()) if isinstance(out, Mapping) else list(out)
    for item in items:
        found = model_output(item)
        if found is not None:
            return found
    return None


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass early."""


def capture_inputs(
    model: Any, batch: CalibrationBatch, modules: Mapping[str, Any], index: int = 0
) -> dict[str, Any]:
    """Input rows (:func:`layer_rows`) of ``modules`` for one batch; the forward pass stops as
    soon as every module has been reached. A module called several times keeps its first call.
    """
    got: dict[str, Any] = {}
    handles = []

    def hook(name: str, module: Any) -> Any:
        def pre(_m: Any, inputs: tuple) -> None:
            if name not in got:
                got[name] = layer_rows(module, inputs[0], batch.token_mask)
            if len(got) == len(modules):
                raise _StopForward

        return pre

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(hook(name, module)))
    try:
        run_batch(model, batch, index)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(modules) - set(got))
    if missing:
        raise ValueError(f"calibration batch {index} never reached the layers {missing[:4]}")
    return got


def collect_grams(
    model: Any,
    batches: Sequence[CalibrationBatch],
    modules: Mapping[str, Any],
    progress: bool = False,
) -> dict[str, InputGram]:
    """Input Gram matrices of ``modules`` over the calibration batches (one pass per batch)."""
    import torch

    sums: dict[str, Any] = {}
    counts: dict[str, int] = dict.fromkeys(modules, 0)
    handles = []
    state = {"mask": None}

    def hook(name: str, module: Any) -> Any:
        def pre(_m: Any, inputs: tuple) -> None:
            rows = layer_rows(module, inputs[0], state["mask"])
            g = (rows.T @ rows).double()
            sums[name] = g if name not in sums else sums[name] + g
            counts[name] += rows.shape[0]

        return pre

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(hook(name, module)))
    it: Any = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="calibration statistics", unit="batch", leave=False)
    try:
        with torch.no_grad():
            for i, batch in enumerate(it):
                state["mask"] = batch.token_mask
                run_batch(model, batch, i)
    finally:
        for h in handles:
            h.remove()
    never = sorted(n for n, c in counts.items() if c == 0)
    if never:
        raise ValueError(f"the calibration batches never reached the layers {never[:4]}")
    return {
        n: InputGram(sums[n].numpy(), counts[n], modules[n].bias is not None) for n in modules
    }


def layer_stages(
    model: Any, batch: CalibrationBatch, modules: Mapping[str, Any]
) -> list[list[str]]:
    """The layers in the order a forward pass reaches them, grouped into stages: consecutive
    layers that read the very same input tensor (e.g. attention's q, k and v) share a stage,
    so they can be reconstructed together from one pass."""
    order: list[tuple[str, int]] = []
    alive: list[Any] = []  # keeps the inputs alive so their ids stay unique

    def hook(name: str) -> Any:
        def pre(_m: Any, inputs: tuple) -> None:
            if all(n != name for n, _ in order):
                alive.append(inputs[0])
                order.append((name, id(inputs[0])))

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        run_batch(model, batch)
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    last = None
    for name, ident in order:
        if stages and ident == last:
            stages[-1].append(name)
        else:
            stages.append([name])
        last = ident
    unreached = [n for n in modules if all(n != m for m, _ in order)]
    if unreached:
        raise ValueError(f"a forward pass never reaches the layers {unreached[:4]}")
    return stages
