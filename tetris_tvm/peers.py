"""The dense runtimes a user would deploy with instead: ONNX Runtime and OpenVINO.

Speedups are judged against the best dense runtime, not only torch eager. Each runner takes
the torch model and example inputs once, and returns a zero-argument callable that runs the
model on those inputs (numpy in, numpy out), so it can be timed interleaved with the others
(:func:`tetris_tvm.bench.time_interleaved`).

Settings, as a user who cares about latency on a small CPU would choose them: the given
number of intra-op threads, one inter-op thread, and for ONNX Runtime
``session.intra_op.allow_spinning=0`` (its spinning worker threads otherwise keep the cores
busy between calls and slow down everything timed next to them); OpenVINO with the
``LATENCY`` performance hint. Both are optional (``pip install -e ".[peers]"``); a missing one
is reported, not an error.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PEERS", "available", "first_output", "onnxruntime_runner", "openvino_runner", "runner"]

PEERS = ("onnxruntime", "openvino")


def available() -> dict[str, str | None]:
    """Each peer's name -> None when importable, else the reason (what to install)."""
    out: dict[str, str | None] = {}
    for name in PEERS:
        if importlib.util.find_spec(name) is None:
            out[name] = f"{name} is not installed (pip install -e \".[peers]\")"
        elif name == "onnxruntime" and importlib.util.find_spec("onnx") is None:
            out[name] = "onnx is not installed (torch's ONNX export needs it)"
        else:
            out[name] = None
    return out


def _plain(model: Any) -> Any:
    """``model`` as a module of positional tensors to its first output tensor (what the
    exporters and converters take; a Hugging Face model returns a ModelOutput)."""
    import torch

    from .calibration import model_output

    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *xs: Any) -> Any:
            return model_output(self.inner(*xs))

    return Plain().eval()


def _inputs(example_inputs: Any) -> tuple[Any, ...]:
    import torch

    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    return tuple(torch.as_tensor(x) for x in example_inputs)


def onnxruntime_runner(model: Any, example_inputs: Any, threads: int = 2,
                       work_dir: str | os.PathLike[str] | None = None) -> Callable[[], Any]:
    """ONNX Runtime on ``model`` exported to ONNX (opset 17, TorchScript exporter)."""
    import onnxruntime as ort
    import torch

    inputs = _inputs(example_inputs)
    folder = Path(work_dir or tempfile.mkdtemp(prefix="tetris-ort-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    names = [f"input{i}" for i in range(len(inputs))]
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 deprecates the TorchScript exporter; the torch.export one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_plain(model), inputs, str(path), input_names=names,
                          opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
    return lambda: session.run(None, feed)


def openvino_runner(model: Any, example_inputs: Any, threads: int = 2,
                    precision: str = "f32") -> Callable[[], Any]:
    """OpenVINO on ``model`` converted from torch directly, latency hint.

    ``precision`` is OpenVINO's inference precision hint: ``"f32"`` computes what the model
    computes (like the other runtimes here); on CPUs with AVX512-BF16 / AMX OpenVINO would
    otherwise run in bfloat16 by default (``precision=None`` keeps its default).
    """
    import openvino as ov
    import torch

    inputs = _inputs(example_inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO traces with torch.jit
        converted = ov.convert_model(_plain(model), example_input=inputs)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(converted, "CPU", config)
    request = compiled.create_infer_request()
    arrays = [x.numpy() for x in inputs]

    def run() -> Any:
        request.infer(arrays)
        return [request.get_output_tensor(i).data for i in range(len(compiled.outputs))]

    return run


def runner(name: str, model: Any, example_inputs: Any, threads: int = 2) -> Callable[[], Any]:
    """The runner of peer ``name`` (one of :data:`PEERS`)."""
    if name == "onnxruntime":
        return onnxruntime_runner(model, example_inputs, threads)
    if name == "openvino":
        return openvino_runner(model, example_inputs, threads)
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


def first_output(result: Sequence[Any] | Any) -> np.ndarray:
    """The first output of a runner's result, as numpy (for checking against torch)."""
    if isinstance(result, (list, tuple)):
        return np.asarray(result[0])
    return np.asarray(result)
