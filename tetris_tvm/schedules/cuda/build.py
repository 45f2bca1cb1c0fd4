"""Build a tetris kernel for CUDA and run it on a GPU (tests with a GPU, ``gpu_check.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import tirx
from tvm.target import Target

from ..pipeline import schedule_module
from . import cuda_target

__all__ = ["CudaKernel", "compile_cuda", "cuda_source", "ensure_cuda_compiler", "nvcc_compile"]


def ensure_cuda_compiler() -> str:
    """Register TVM's CUDA compile callback and pick a backend; returns ``"nvrtc"``/``"nvcc"``.

    TVM 0.27 keeps the generated CUDA C++ in the compiled module and compiles it when the module
    is loaded on a GPU, through ``tvm_callback_cuda_compile`` (``tvm.support.nvcc``): NVRTC
    needs the ``cuda-bindings`` package, nvcc needs the toolkit on ``PATH``.  An explicit
    ``TVM_CUDA_COMPILE_MODE`` wins; otherwise NVRTC when importable, else nvcc.
    """
    import importlib.util
    import os
    import shutil

    import tvm.support.nvcc  # noqa: F401 - registers tvm_callback_cuda_compile

    mode = os.environ.get("TVM_CUDA_COMPILE_MODE")
    if mode:
        return mode
    has_nvrtc = importlib.util.find_spec("cuda") is not None and (
        importlib.util.find_spec("cuda.bindings") is not None
    )
    mode = "nvrtc" if has_nvrtc or shutil.which("nvcc") is None else "nvcc"
    os.environ["TVM_CUDA_COMPILE_MODE"] = mode
    return mode


def nvcc_compile(source: str, arch: str = "sm_90", fmt: str = "cubin") -> bytes:
    """Compile generated CUDA C++ with nvcc (no GPU needed); raises on a compile error."""
    from tvm.support import nvcc

    with cuda_target(arch):
        return bytes(nvcc.compile_cuda(source, target_format=fmt, compiler="nvcc"))


def compile_cuda(func: tirx.PrimFunc, target: Target | None = None) -> tvm.runtime.Executable:
    """Schedule ``func`` with the CUDA rules and compile it (no GPU needed)."""
    target = target or cuda_target()
    mod = schedule_module(tvm.IRModule({"main": func}), target)
    return tvm.compile(mod, target=target)


def cuda_source(executable: tvm.runtime.Executable) -> str:
    """The generated CUDA C++ of a compiled kernel."""
    return executable.mod.imports[0].inspect_source()


class CudaKernel:
    """A compiled kernel with its constant arguments on the GPU: ``kernel(x) -> y`` (numpy)."""

    def __init__(
        self,
        func: tirx.PrimFunc,
        consts: Sequence[np.ndarray],
        out_shape: Sequence[int],
        out_dtype: str = "float32",
        target: Target | None = None,
        executable: tvm.runtime.Executable | None = None,
    ):
        ensure_cuda_compiler()
        self.target = target or cuda_target()
        self.executable = executable or compile_cuda(func, self.target)
        self.dev = tvm.cuda(0)
        self.consts = [tvm.runtime.tensor(np.ascontiguousarray(c), self.dev) for c in consts]
        self.out_shape = tuple(int(d) for d in out_shape)
        self.out_dtype = out_dtype
        self._fn = self.executable["main"]

    def run(self, x: tvm.runtime.Tensor, out: tvm.runtime.Tensor) -> None:
        """Run on device tensors (no copies)."""
        self._fn(x, *self.consts, out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Copy ``x`` to the GPU, run, return the output as numpy."""
        xt = tvm.runtime.tensor(np.ascontiguousarray(x), self.dev)
        out = tvm.runtime.empty(self.out_shape, self.out_dtype, self.dev)
        self.run(xt, out)
        self.dev.sync()
        return out.numpy()

    def time(self, x: np.ndarray, number: int = 20, repeat: int = 10) -> float:
        """Median seconds per call (``time_evaluator``, ``repeat`` samples of ``number`` runs)."""
        xt = tvm.runtime.tensor(np.ascontiguousarray(x), self.dev)
        out = tvm.runtime.empty(self.out_shape, self.out_dtype, self.dev)
        evaluator = self.executable.mod.time_evaluator(
            "main", self.dev, number=number, repeat=repeat
        )
        return float(np.median(evaluator(xt, *self.consts, out).results))
