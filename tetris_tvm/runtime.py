"""Running a compiled model: the Relax VM, the calling convention, and input checks.

Shared by :class:`tetris_tvm.compiler.CompiledModel` (just compiled) and :class:`LoadedModel`
(an exported library loaded back with :func:`load`, which needs no torch). A call converts
its inputs without copying where it can (DLPack for aligned, contiguous CPU tensors; a copy
otherwise), and checks each one against what the model was compiled for, so that a wrong shape
or dtype is an error that names the input, the expected and the given values, and the way out,
instead of a TVM check failure from inside the VM.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._compat import quiet_vm_serialization
from .libfile import check_library, private_copy

__all__ = [
    "META_SUFFIX", "InputSpec", "LoadedModel", "ModelRunner", "flatten_tensors", "load",
    "use_all_cores",
]

META_SUFFIX = ".tetris.json"
"""Suffix of the metadata written beside an exported library (inputs, outputs, report)."""

_ALIGN = 64  # TVM's allocation alignment; kernels may assume it of their buffers


def use_all_cores() -> None:
    """Make TVM's CPU thread pool use every core this process may run on.

    On 2-vCPU machines TVM's runtime can default to ONE worker thread (half the speed of a
    2-thread torch). ``TVM_NUM_THREADS`` is read when the pool is first created,
    so this runs before anything executes a kernel (compile's constant folding included); a
    value the user already set wins.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))


class InputSpec:
    """What one model input must be: a name, a shape (``None`` for a dynamic dimension, with
    an optional upper bound) and a dtype."""

    def __init__(self, name: str, shape: Sequence[int | None], dtype: str,
                 max_dim: int | None = None) -> None:
        self.name = name
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = str(dtype)
        self.max_dim = max_dim

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        return cls(d["name"], d["shape"], d["dtype"], d.get("max_dim"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "max_dim": self.max_dim}

    def describe(self) -> str:
        dims = ", ".join("N" if d is None else str(d) for d in self.shape)
        return f"({dims}) {self.dtype}"

    def check(self, shape: Sequence[int], dtype: str) -> None:
        """A ValueError in our words when ``shape`` / ``dtype`` do not fit this input."""
        if dtype != self.dtype:
            convertible = self.dtype.startswith("int") or (
                self.dtype.startswith("float") and dtype.startswith("float"))
            hint = (f"; convert it first (torch: .to(torch.{self.dtype}), numpy: .astype)"
                    if convertible else "")
            raise ValueError(f"input {self.name!r}: expected dtype {self.dtype}, got {dtype}"
                             + hint)
        shape = tuple(int(d) for d in shape)
        ok = len(shape) == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, shape, strict=True)
        )
        if not ok:
            hint = ""
            if (len(shape) == len(self.shape) and shape[1:] == self.shape[1:]
                    and self.shape[:1] != (None,)):
                hint = ("; the batch size is fixed at compile time: compile with "
                        "dynamic_batch=True (or a bound such as dynamic_batch=64) to vary it")
            raise ValueError(f"input {self.name!r}: expected shape {self.describe()}, got "
                             f"{shape}{hint}")
        if self.max_dim is not None and self.shape[:1] == (None,) and shape[0] > self.max_dim:
            raise ValueError(f"input {self.name!r}: batch {shape[0]} is above the bound "
                             f"{self.max_dim} the model was compiled with (dynamic_batch)")


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], str]:
    if hasattr(x, "detach"):  # torch tensor
        return tuple(x.shape), str(x.dtype).removeprefix("torch.")
    return tuple(x.shape), str(x.dtype)


def _to_tvm(x: Any, device: Any) -> Any:
    """A TVM tensor for ``x`` on ``device``: the same memory where DLPack allows it (a
    contiguous, 64-byte aligned CPU tensor going to the CPU), else a copy."""
    import tvm

    if hasattr(x, "detach"):  # torch tensor
        x = x.detach()
        if (device.dlpack_device_type() == 1 and x.device.type == "cpu" and x.is_contiguous()
                and x.data_ptr() % _ALIGN == 0 and not x.requires_grad):
            return tvm.runtime.from_dlpack(x)
        x = x.cpu().contiguous().numpy()
    x = np.asarray(x)
    if (device.dlpack_device_type() == 1 and x.flags.c_contiguous and x.flags.writeable
            and x.ctypes.data % _ALIGN == 0 and x.ndim > 0):
        return tvm.runtime.from_dlpack(x)
    return tvm.runtime.tensor(np.ascontiguousarray(x), device)


def flatten_tensors(out: Any) -> list[Any]:
    """The VM's (possibly nested) output as a flat list of TVM tensors."""
    if hasattr(out, "numpy"):
        return [out]
    return [o for item in out for o in flatten_tensors(item)]


class ModelRunner:
    """A Relax VM over an executable and the model's calling convention (meta: input names
    and specs, whether the output is a tuple).

    One model may be called from any number of threads at once: a Relax VM keeps its
    registers in the VM object, so every calling thread gets a VM of its own over the one
    executable (the weights are the executable's constants, shared, not copied).
    """

    def __init__(self, executable: Any, device_name: str, meta: Mapping[str, Any]) -> None:
        use_all_cores()
        import tvm

        self.executable = executable
        self.meta = dict(meta)
        self.input_specs = [InputSpec.from_dict(d) for d in self.meta.get("inputs", [])]
        self._device_name = device_name
        self._local = threading.local()
        self._lock = threading.Lock()
        try:
            self.device = tvm.device(device_name, 0)
        except Exception as e:  # noqa: BLE001 - TVM raises ValueError / TVMError
            raise ValueError(f"unknown device {device_name!r} (use 'cpu' or 'cuda')") from e

    def _vm_of_thread(self) -> Any:
        """The calling thread's VM and its ``main``, made on the thread's first call."""
        state = self._local.__dict__
        if "main" not in state:
            from tvm import relax

            if not self.device.exist:
                name = self._device_name
                raise ValueError(
                    f"this machine has no {name} device (or its TVM was built without {name} "
                    f"support): run the model where there is one, or compile it for "
                    "target='llvm'")
            with self._lock:  # VM creation reads the shared executable
                vm = relax.VirtualMachine(self.executable, self.device)
            state["vm"], state["main"] = vm, vm["main"]
        return state["main"]

    @property
    def vm(self) -> Any:
        """The calling thread's Relax VM (for profiling and timers)."""
        self._vm_of_thread()
        return self._local.vm

    def _args(self, inputs: Sequence[Any]) -> list[Any]:
        names = self.meta["input_names"]
        if len(inputs) != len(names):
            raise ValueError(f"expected {len(names)} inputs ({', '.join(names)}), "
                             f"got {len(inputs)}")
        for spec, x in zip(self.input_specs, inputs, strict=False):
            if not hasattr(x, "shape"):
                given = "None" if x is None else type(x).__name__
                raise ValueError(f"input {spec.name!r}: expected a tensor or array of "
                                 f"{spec.describe()}, got {given}")
            spec.check(*_shape_dtype(x))
        return [_to_tvm(x, self.device) for x in inputs]

    def run_tvm(self, *inputs: Any) -> Any:
        """Run and return the VM's own output (TVM tensors, nested as the model returns)."""
        main = self._vm_of_thread()
        args = self._args(inputs)
        try:
            return main(*args)
        except Exception as e:  # noqa: BLE001 - the VM's checks, in our words
            raise _call_error(e, self.meta) from None

    def run_numpy(self, *inputs: Any) -> list[np.ndarray]:
        """Run on numpy (or torch) inputs, return the flat list of numpy outputs."""
        return [t.numpy() for t in flatten_tensors(self.run_tvm(*inputs))]

    def benchmark(self, *inputs: Any, number: int = 5, repeat: int = 5) -> float:
        """Median seconds per call (TVM's time_evaluator)."""
        args = self._args(inputs)
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return float(timer(*args).median)


_SHAPE_CHECK = re.compile(r"param=(\w+), annotation=R\.Tensor\(\(([^)]*)\), dtype=\"?(\w+)")


def _call_error(e: Exception, meta: Mapping[str, Any]) -> Exception:
    """A VM failure as an error in our words: a shape or dtype the library itself checks
    (the model's metadata disagrees with its library) or an error from inside a kernel."""
    text = str(e)
    found = _SHAPE_CHECK.search(text)
    if found:
        name, dims, dtype = found.groups()
        source = meta.get("source", "the model's metadata")
        return ValueError(
            f"input {name!r}: the library expects shape ({dims}) {dtype}; the input passed the "
            f"checks of {source}, which does not describe this library (export the model "
            "again, or keep the .so and its .tetris.json together)")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return RuntimeError(f"the compiled model failed while running: {first}")


class LoadedModel(ModelRunner):
    """An exported model loaded back: numpy (or torch) in, numpy out; needs no torch."""

    def __call__(self, *inputs: Any) -> Any:
        outs = self.run_numpy(*inputs)
        return tuple(outs) if self.meta["output_is_tuple"] or len(outs) > 1 else outs[0]


def load(path: str | os.PathLike[str], device: str = "cpu") -> LoadedModel:
    """Load a library written by :meth:`CompiledModel.export` (works without torch).

    The file is checked before the dynamic loader sees it (a complete shared library for
    this machine and, when its ``.tetris.json`` recorded them, the size and SHA-256 written
    at export), so a truncated, foreign or mismatched file is a ValueError naming it. Each
    call loads the file as it is now: a path exported again loads the new model.
    """
    import tvm

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such compiled model")
    meta_path = Path(str(path) + META_SUFFIX)
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: not the metadata tetris-tvm writes ({e}); export the "
                         "model again") from None
    data = check_library(path, meta.get("library"))
    meta.setdefault("input_names", ["input"])
    meta.setdefault("output_is_tuple", False)
    meta["source"] = meta_path.name if meta_path.exists() else "no metadata file"
    try:
        with quiet_vm_serialization(), private_copy(data, path.suffix or ".so") as copy:
            lib = tvm.runtime.load_module(str(copy))
    except Exception as e:  # noqa: BLE001 - TVM raises InternalError / TVMError / OSError
        raise ValueError(f"{path}: not a loadable compiled model ({_first_line(e)}); export "
                         "it again, or cross-compile it for this machine") from None
    try:
        model = LoadedModel(lib, device, meta)
        with quiet_vm_serialization():
            model.vm  # noqa: B018 - make this thread's VM now: a wrong library fails here
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a library without a Relax VM entry point
        raise ValueError(f"{path}: a shared library, but not a model tetris-tvm exported "
                         f"({_first_line(e)})") from None
    _check_signature(model, path)
    return model


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return re.sub(r"^.*Check failed: ", "", text)[:200]


def _check_signature(model: LoadedModel, path: Path) -> None:
    """The metadata's inputs against the library's ``main`` (a sidecar of another model
    beside this library)."""
    vm = model.vm
    try:
        arity = int(vm._get_function_arity("main"))
        params = [str(vm._get_function_param_name("main", i)) for i in range(arity)]
    except Exception:  # noqa: BLE001 - a VM without these queries: nothing to compare
        return
    names = list(model.meta["input_names"])
    if params != names:
        raise ValueError(f"{path}: the library's model takes inputs ({', '.join(params)}), its "
                         f"metadata names ({', '.join(names)}): keep each .so with its own "
                         ".tetris.json, or export the model again")
