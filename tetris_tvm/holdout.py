"""Held-back calibration inputs: the check that one-shot recovery helps on data it did not fit.

Recovery (activation-aware importance, sensitivity allocation, reconstruction) fits the
calibration inputs; judged on the same inputs it always looks better than plain magnitude
pruning. :func:`split_holdout` keeps a quarter of the calibration inputs away from recovery,
and :func:`output_errors` measures plans' whole-model output error on them, so the recovered
plan can be compared with the plain one on inputs neither saw.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from .calibration import CalibrationBatch, model_output, run_batch

__all__ = ["split_holdout", "output_errors"]


def _rows(batch: CalibrationBatch, rows: slice) -> CalibrationBatch:
    import torch

    def cut(x: Any) -> Any:
        return x[rows] if isinstance(x, torch.Tensor) and x.ndim else x

    return CalibrationBatch(
        tuple(cut(a) for a in batch.args), {k: cut(v) for k, v in batch.kwargs.items()},
        None if batch.token_mask is None else batch.token_mask[rows])


def _splittable(batch: CalibrationBatch) -> bool:
    import torch

    tensors = [x for x in (*batch.args, *batch.kwargs.values()) if isinstance(x, torch.Tensor)]
    return batch.size >= 4 and all(x.ndim and x.shape[0] == batch.size for x in tensors)


def split_holdout(
    batches: Sequence[CalibrationBatch],
) -> tuple[list[CalibrationBatch], list[CalibrationBatch]]:
    """``(fit, held)``: the last quarter of the batches held back when there are at least
    four, else the last quarter of every batch's samples (when each tensor has the batch as
    its first axis and four or more samples). ``held`` is empty when neither works: the
    check is then skipped."""
    batches = list(batches)
    if len(batches) >= 4:
        cut = len(batches) - len(batches) // 4
        return batches[:cut], batches[cut:]
    if not batches or not all(_splittable(b) for b in batches):
        return batches, []
    fit, held = [], []
    for b in batches:
        cut = b.size - b.size // 4
        fit.append(_rows(b, slice(0, cut)))
        held.append(_rows(b, slice(cut, None)))
    return fit, held


def output_errors(model: Any, plans: Sequence[Any],
                  batches: Sequence[CalibrationBatch]) -> list[float]:
    """Relative squared error of each pruned model's output (a plan applied to a copy of
    ``model``) against the dense model's, over ``batches`` (padding positions left out); the
    dense outputs are computed once for all plans."""
    import torch

    dense = copy.deepcopy(model).eval()  # the caller's model keeps its mode
    pruned = [plan.apply(copy.deepcopy(model).eval(), keep=False) for plan in plans]
    num, den = [0.0] * len(plans), 0.0
    for i, batch in enumerate(batches):
        want = model_output(run_batch(dense, batch, i))
        if want is None:
            continue
        want = want.float()
        mask = batch.token_mask
        keep = mask is not None and tuple(want.shape[:mask.ndim]) == tuple(mask.shape)
        if keep:
            want = want[mask]
        for k, m in enumerate(pruned):
            got = model_output(run_batch(m, batch, i)).float()
            num[k] += float(torch.sum(((got[mask] if keep else got) - want) ** 2))
        den += float(torch.sum(want ** 2))
    return [n / den if den > 0 else 0.0 for n in num]
