"""Importance of every weight element: what TETRIS clusters and prunes instead of ``|W|``.

TETRIS sums an importance map over every block and prunes the blocks with the smallest sums;
the reordering moves rows and columns so that unimportant elements share blocks. Which map is
summed decides what the pruned model loses:

- ``"magnitude"``: ``|W_ij|`` (the paper's choice; needs no data).
- ``"activation"``: ``|W_ij| * ||x_j||``, the weight times the RMS of its input over the
  calibration data (as in Wanda): a large weight on an input that is always near zero
  matters little, a small weight on a large input matters.
- ``"hessian"``: ``W_ij^2 / [H^-1]_jj`` with ``H = X^T X`` (damped), the optimal-brain-surgeon
  saliency: the output error left when the element is removed and the rest of its row is
  refitted. The natural choice when :mod:`tetris_tvm.reconstruct` refits the kept weights.

Conv weights ``(O, I, kh, kw)`` get a score per element (the input statistic of every
window position); TETRIS sums the window inside a block, as it does for |W|.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .calibration import CalibrationBatch, InputGram, collect_grams, layer_modules

__all__ = ["IMPORTANCE", "importance_scores", "layer_importance"]

IMPORTANCE: tuple[str, ...] = ("magnitude", "activation", "hessian")


def _damped_inverse_diag(gram: np.ndarray, damp: float) -> np.ndarray:
    d = np.diag(gram)
    lam = damp * float(d.mean()) if d.size and d.mean() > 0 else damp
    h = gram + lam * np.eye(gram.shape[0])
    try:
        import scipy.linalg

        c = scipy.linalg.cho_factor(h, lower=True)
        inv = scipy.linalg.cho_solve(c, np.eye(h.shape[0]))
    except (ImportError, np.linalg.LinAlgError):
        inv = np.linalg.pinv(h)
    return np.clip(np.diag(inv), 1e-30, None)


def importance_scores(
    weight: np.ndarray, gram: InputGram | None, kind: str = "activation", damp: float = 0.01
) -> np.ndarray:
    """A nonnegative score of ``weight``'s shape (float32). ``gram`` is needed unless
    ``kind == "magnitude"``."""
    if kind not in IMPORTANCE:
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {kind!r}")
    w = np.asarray(weight, dtype=np.float64)
    if kind == "magnitude":
        return np.abs(w).astype(np.float32)
    if gram is None:
        raise ValueError(f"importance={kind!r} needs calibration data")
    cols = int(np.prod(w.shape[1:]))
    if kind == "activation":
        scale = np.sqrt(np.clip(gram.mean_square, 0.0, None))
    else:
        inv_diag = _damped_inverse_diag(gram.gram, damp)
        scale = 1.0 / (inv_diag[:-1] if gram.has_bias else inv_diag)
    if scale.size != cols:
        raise ValueError(
            f"calibration statistics have {scale.size} input columns, the weight {w.shape} "
            f"needs {cols}"
        )
    scale = scale.reshape(w.shape[1:])
    out = np.abs(w) * scale if kind == "activation" else w * w * scale
    return out.astype(np.float32)


def layer_importance(
    model: Any,
    batches: Sequence[CalibrationBatch],
    names: Sequence[str],
    kind: str = "activation",
    damp: float = 0.01,
    progress: bool = False,
) -> tuple[dict[str, InputGram], dict[str, np.ndarray]]:
    """Input Gram matrices of the named layers over ``batches`` (the model run in eval mode,
    its mode restored after) and the importance scores of their CURRENT weights."""
    was_training = model.training
    model.eval()
    try:
        grams = collect_grams(model, batches, layer_modules(model, names), progress=progress)
    finally:
        model.train(was_training)
    params = dict(model.named_parameters())
    scores = {
        n: importance_scores(params[n].detach().cpu().float().numpy(), grams[n], kind, damp)
        for n in names
    }
    return grams, scores
