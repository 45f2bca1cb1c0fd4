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

__all__ = ["PEERS", "VARIANTS", "PeerModel", "as_torch_module", "available", "build",
           "first_output",
           "onnxruntime_model", "onnxruntime_runner", "openvino_model", "openvino_runner",
           "runner"]

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


def _export_onnx(model: Any, inputs: tuple[Any, ...], folder: Path,
                 dynamic: bool) -> tuple[Path, list[str]]:
    import torch

    path = folder / "model.onnx"
    names = [f"input{i}" for i in range(len(inputs))]
    axes = None
    if dynamic:  # batch (and, for token ids and masks, the sequence) may vary
        axes = {n: ({0: "batch", 1: "seq"} if x.ndim == 2 and not x.is_floating_point()
                    else {0: "batch"}) for n, x in zip(names, inputs, strict=True)}
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 deprecates the TorchScript exporter; the torch.export one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_plain(model), inputs, str(path), input_names=names,
                          opset_version=17, dynamo=False, dynamic_axes=axes)
    return path, names


class PeerModel:
    """A model compiled by a peer runtime: ``model(*arrays)`` runs it on numpy inputs of any
    shape it was exported for and returns its outputs (numpy); :meth:`timer` binds fixed
    inputs for timing (one call per sample, nothing converted)."""

    def __init__(self, name: str, run: Callable[[list[np.ndarray]], list[np.ndarray]],
                 bind: Callable[[list[np.ndarray]], Callable[[], Any]], note: str = "") -> None:
        self.name = name
        self.note = note  # how the build departs from the plain recipe, if it does
        self._run = run
        self._bind = bind

    def __call__(self, *arrays: Any) -> list[np.ndarray]:
        return self._run([np.ascontiguousarray(np.asarray(a)) for a in arrays])

    def timer(self, *arrays: Any) -> Callable[[], Any]:
        return self._bind([np.ascontiguousarray(np.asarray(a)) for a in arrays])


def onnxruntime_model(model: Any, example_inputs: Any, threads: int = 2, *,
                      int8: bool = False, dynamic: bool = True,
                      work_dir: str | os.PathLike[str] | None = None) -> PeerModel:
    """ONNX Runtime on ``model`` exported to ONNX (opset 17); ``int8``: its dynamic
    quantization (``quantize_dynamic``: int8 weights, activations quantized per call)."""
    import onnxruntime as ort

    inputs = _inputs(example_inputs)
    folder = Path(work_dir or tempfile.mkdtemp(prefix="tetris-ort-"))
    folder.mkdir(parents=True, exist_ok=True)
    path, names = _export_onnx(model, inputs, folder, dynamic)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = folder / "model.int8.onnx"
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
        path = quantized
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return list(session.run(None, dict(zip(names, arrays, strict=True))))

    def bind(arrays: list[np.ndarray]) -> Callable[[], Any]:
        feed = dict(zip(names, arrays, strict=True))
        return lambda: session.run(None, feed)

    return PeerModel("onnxruntime-int8" if int8 else "onnxruntime", run, bind)


def openvino_model(model: Any, example_inputs: Any, threads: int = 2, *,
                   precision: str | None = "f32", calibration: Any = None) -> PeerModel:
    """OpenVINO on ``model`` converted from torch, latency hint.

    ``precision``: the inference precision hint, ``"f32"`` (what the model computes), or
    None for OpenVINO's default on this CPU (bfloat16 where it has AVX512-BF16 / AMX).
    ``calibration`` (a list of input tuples): quantize to int8 first with NNCF's
    post-training quantization (``model_type=TRANSFORMER`` for inputs that are token ids).
    """
    import openvino as ov
    import torch

    inputs = _inputs(example_inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO traces with torch.jit
        converted = ov.convert_model(_plain(model), example_input=inputs)
    name = "openvino" if precision == "f32" else "openvino-default"
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    note = ""
    if calibration is not None:
        name = "openvino-int8"
        tokens = not inputs[0].is_floating_point()
        compiled, note = _nncf_compiled(converted, calibration, tokens, config)
    else:
        compiled = ov.Core().compile_model(converted, "CPU", config)
    request = compiled.create_infer_request()
    outputs = len(compiled.outputs)

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        request.infer(arrays)
        return [np.array(request.get_output_tensor(i).data) for i in range(outputs)]

    def bind(arrays: list[np.ndarray]) -> Callable[[], Any]:
        def call() -> Any:
            request.infer(arrays)
            return [request.get_output_tensor(i).data for i in range(outputs)]

        return call

    return PeerModel(name, run, bind, note)


def _nncf_compiled(converted: Any, calibration: Any, tokens: bool,
                   config: dict[str, Any]) -> tuple[Any, str]:
    """NNCF's int8 post-training quantization of ``converted``, compiled for the CPU. Where
    OpenVINO's CPU plugin has no int8 kernel for a quantized conv with fewer than 4 input
    channels (an MNIST CNN's first layer), those convs are left float32 and the note says so."""
    import nncf
    import openvino as ov

    items = [tuple(np.asarray(a) for a in (b if isinstance(b, (tuple, list)) else (b,)))
             for b in calibration]

    def quantized(ignored: list[str]) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nncf.quantize(
                converted, nncf.Dataset(items), subset_size=len(items),
                model_type=nncf.ModelType.TRANSFORMER if tokens else None,
                ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)

    try:
        return ov.Core().compile_model(quantized([]), "CPU", config), ""
    except RuntimeError:
        narrow = [op.get_friendly_name() for op in converted.get_ops()
                  if op.get_type_name() == "Convolution"
                  and op.input(1).get_partial_shape()[1].is_static
                  and op.input(1).get_partial_shape()[1].get_length() < 4]
        if not narrow:
            raise
    note = (f"{len(narrow)} conv(s) with fewer than 4 input channels left float32 (OpenVINO's "
            "CPU plugin did not compile them in int8)")
    return ov.Core().compile_model(quantized(narrow), "CPU", config), note


def onnxruntime_runner(model: Any, example_inputs: Any, threads: int = 2,
                       work_dir: str | os.PathLike[str] | None = None) -> Callable[[], Any]:
    """ONNX Runtime (float32) on the example inputs, as a zero-argument callable."""
    peer = onnxruntime_model(model, example_inputs, threads, dynamic=False, work_dir=work_dir)
    return peer.timer(*(x.numpy() for x in _inputs(example_inputs)))


def openvino_runner(model: Any, example_inputs: Any, threads: int = 2,
                    precision: str | None = "f32") -> Callable[[], Any]:
    """OpenVINO on the example inputs, as a zero-argument callable (see :func:`openvino_model`)."""
    peer = openvino_model(model, example_inputs, threads, precision=precision)
    return peer.timer(*(x.numpy() for x in _inputs(example_inputs)))


VARIANTS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-default", "openvino-int8")
"""Every peer at every precision: float32, OpenVINO's default for the CPU, int8."""


def build(variant: str, model: Any, example_inputs: Any, threads: int = 2,
          calibration: Any = None) -> PeerModel:
    """Peer ``variant`` (one of :data:`VARIANTS`) compiled for ``model``; ``openvino-int8``
    needs ``calibration`` (a list of input tuples for NNCF)."""
    if variant == "onnxruntime":
        return onnxruntime_model(model, example_inputs, threads)
    if variant == "onnxruntime-int8":
        return onnxruntime_model(model, example_inputs, threads, int8=True)
    if variant == "openvino":
        return openvino_model(model, example_inputs, threads, precision="f32")
    if variant == "openvino-default":
        return openvino_model(model, example_inputs, threads, precision=None)
    if variant == "openvino-int8":
        if calibration is None:
            raise ValueError("openvino-int8 quantizes with NNCF: pass calibration inputs")
        return openvino_model(model, example_inputs, threads, precision=None,
                              calibration=calibration)
    raise ValueError(f"unknown peer variant {variant!r}; known: {', '.join(VARIANTS)}")


def runner(name: str, model: Any, example_inputs: Any, threads: int = 2) -> Callable[[], Any]:
    """The runner of peer ``name`` (one of :data:`PEERS`, float32)."""
    if name == "onnxruntime":
        return onnxruntime_runner(model, example_inputs, threads)
    if name == "openvino":
        return openvino_runner(model, example_inputs, threads)
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


def as_torch_module(peer: PeerModel, keywords: Sequence[str] | None = None,
                    as_tuple: bool = False) -> Any:
    """``peer`` behind a torch module's interface (torch tensors in, torch out: its first
    output, or with ``as_tuple`` all of them as a tuple), so that held-out evaluators written
    for torch models measure the peer itself. ``keywords``: the keyword names the evaluator
    passes (``input_ids``, ``attention_mask``), in the peer's input order."""
    import torch

    names = list(keywords or [])

    class Peer(torch.nn.Module):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            arrays = [a.numpy() for a in args] + [kwargs[n].numpy() for n in names
                                                  if n in kwargs]
            outs = tuple(torch.from_numpy(np.asarray(o)) for o in peer(*arrays))
            return outs if as_tuple else outs[0]

    return Peer().eval()


def first_output(result: Sequence[Any] | Any) -> np.ndarray:
    """The first output of a runner's result, as numpy (for checking against torch)."""
    if isinstance(result, (list, tuple)):
        return np.asarray(result[0])
    return np.asarray(result)
