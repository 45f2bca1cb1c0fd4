"""Convenience layer: build a scheduled kernel for a given weight and call it on numpy arrays.

Used by the tests and benchmarks; the compiler passes use :mod:`.kernels` directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import tirx
from tvm.target import Target

from ..kernels import compute as K
from ..kernels.bsr import BSRMatrix
from .pipeline import schedule_module
from .targets import default_target

__all__ = [
    "CompiledKernel",
    "build_block_sparse_conv2d",
    "build_block_sparse_linear",
    "build_dense_conv2d",
    "build_dense_linear",
    "compile_prim_func",
    "default_target",
    "schedule_module",
]




def compile_prim_func(func: tirx.PrimFunc, target: Target | None = None) -> tvm.runtime.Module:
    """Schedule (default rules) and compile one PrimFunc; returns the runtime module."""
    target = target or default_target()
    mod = schedule_module(tvm.IRModule({"main": func}), target)
    return tvm.compile(mod, target=target)


class CompiledKernel:
    """A compiled kernel with its constant arguments bound: ``kernel(x) -> y`` on numpy arrays."""

    def __init__(
        self,
        func: tirx.PrimFunc,
        consts: Sequence[np.ndarray],
        out_shape: Sequence[int],
        target: Target | None = None,
    ):
        self.func = func
        self.target = target or default_target()
        self.executable = compile_prim_func(func, self.target)
        self.dev = tvm.cpu()
        self.consts = [tvm.runtime.tensor(np.ascontiguousarray(c), self.dev) for c in consts]
        self.out_shape = tuple(int(d) for d in out_shape)
        self._fn = self.executable["main"]

    def run(self, x: tvm.runtime.Tensor, out: tvm.runtime.Tensor) -> None:
        """Run on device tensors (no copies)."""
        self._fn(x, *self.consts, out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run on a numpy input, return a fresh numpy output."""
        xt = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)
        out = tvm.runtime.tensor(np.empty(self.out_shape, np.float32), self.dev)
        self.run(xt, out)
        return out.numpy()

    def timer(self, x: np.ndarray, number: int = 10):
        """A zero-argument callable returning the mean seconds of ``number`` runs."""
        xt = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)
        out = tvm.runtime.tensor(np.empty(self.out_shape, np.float32), self.dev)
        evaluator = self.executable.mod.time_evaluator("main", self.dev, number=number, repeat=1)
        return lambda: evaluator(xt, *self.consts, out).mean


def _bias_arg(bias: np.ndarray | None) -> list[np.ndarray]:
    return [] if bias is None else [np.asarray(bias, np.float32)]


def _dense_kernel(
    func: tirx.PrimFunc,
    w2d: np.ndarray,
    bias: np.ndarray | None,
    block_n: int,
    out_shape: Sequence[int],
    target: Target | None,
) -> CompiledKernel:
    """A dense kernel with its ``(rows, K)`` weight packed in ``block_n`` column panels."""
    return CompiledKernel(func, [K.pack_dense_weight(w2d, block_n), *_bias_arg(bias)],
                          out_shape, target)


def build_block_sparse_linear(
    bsr: BSRMatrix,
    x_shape: Sequence[int],
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target: Target | None = None,
    fmt: str = "auto",
    row_chunk: int | None | str = "auto",
) -> CompiledKernel:
    """``y = act(x @ W.T + bias)`` with ``W = bsr`` (x of shape ``x_shape``, last dim K).

    ``row_chunk="auto"`` applies :func:`.kernels.linear_row_chunk` to the row count.
    """
    if row_chunk == "auto":
        row_chunk = K.linear_row_chunk(int(np.prod(x_shape[:-1])))
    func = K.block_sparse_linear(
        x_shape, bsr, bias=bias is not None, activation=activation, fmt=fmt, row_chunk=row_chunk
    )
    consts = K.linear_weight_args(bsr, bias, fmt)
    return CompiledKernel(func, consts, (*x_shape[:-1], bsr.shape[0]), target)


def build_dense_linear(
    w: np.ndarray,
    x_shape: Sequence[int],
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target: Target | None = None,
    block_n: int = 16,
) -> CompiledKernel:
    """Dense ``y = act(x @ w.T + bias)`` with our schedule (the baseline)."""
    w = np.asarray(w, np.float32)
    func = K.dense_linear(
        x_shape, w.shape[0], block_n=block_n, bias=bias is not None, activation=activation
    )
    return _dense_kernel(func, w, bias, block_n, (*x_shape[:-1], w.shape[0]), target)


def build_block_sparse_conv2d(
    bsr: BSRMatrix,
    x_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target: Target | None = None,
    fmt: str = "auto",
) -> CompiledKernel:
    """Block-sparse NCHW conv2d; ``bsr`` is the BSR form of ``w.reshape(Cout, -1)``."""
    func = K.block_sparse_conv2d(
        x_shape, bsr, kernel_size, stride=stride, padding=padding, dilation=dilation,
        bias=bias is not None, activation=activation, fmt=fmt,
    )
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    geo = K.Conv2dGeometry(
        x_shape, (bsr.shape[0], bsr.shape[1] // (kh * kw), kh, kw), stride, padding, dilation
    )
    consts = K.conv2d_weight_args(bsr, bias, fmt)
    return CompiledKernel(func, consts, geo.out_shape, target)


def build_dense_conv2d(
    w: np.ndarray,
    x_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target: Target | None = None,
    block_n: int = 16,
) -> CompiledKernel:
    """Dense NCHW conv2d with our schedule (the baseline); ``w`` is ``(Cout, Cin, kh, kw)``."""
    w = np.asarray(w, np.float32)
    func = K.dense_conv2d(
        x_shape, w.shape, stride=stride, padding=padding, dilation=dilation,
        block_n=block_n, bias=bias is not None, activation=activation,
    )
    geo = K.Conv2dGeometry(x_shape, w.shape, stride, padding, dilation)
    return _dense_kernel(func, w.reshape(w.shape[0], -1), bias, block_n, geo.out_shape, target)
