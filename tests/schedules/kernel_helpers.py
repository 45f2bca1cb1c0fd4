"""Shared helpers for the kernel tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import functools

import numpy as np
import tvm

from tetris_tvm.kernels import BSRMatrix
from tetris_tvm.schedules.build import CompiledKernel, default_target


@functools.lru_cache(maxsize=1)
def cpu_target() -> tvm.target.Target:
    """The host llvm target (built once)."""
    return default_target()


def run_poisoned(kernel: CompiledKernel, x: np.ndarray) -> np.ndarray:
    """Run with the output pre-filled with NaN, so that unwritten elements fail the check."""
    xt = tvm.runtime.tensor(np.ascontiguousarray(x, np.float32))
    out = tvm.runtime.tensor(np.full(kernel.out_shape, np.nan, np.float32))
    kernel.run(xt, out)
    return out.numpy()


def random_bsr(
    rng: np.random.Generator,
    shape: tuple[int, int],
    block: tuple[int, int],
    sparsity: float,
    empty_rows: tuple[int, ...] = (),
) -> BSRMatrix:
    """A random weight with a random block mask (some block-rows forced empty)."""
    nb, kb = -(-shape[0] // block[0]), -(-shape[1] // block[1])
    mask = rng.random((nb, kb)) >= sparsity
    for r in empty_rows:
        mask[r % nb] = False
    w = rng.standard_normal(shape).astype(np.float32)
    return BSRMatrix.from_dense(w, block, mask)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """fp32 comparison scaled by the output magnitude (no NaN allowed)."""
    assert not np.isnan(actual).any(), "kernel left unwritten (NaN) outputs"
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)
