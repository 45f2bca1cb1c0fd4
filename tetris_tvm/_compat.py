"""Workarounds for the versions this package pins, in one place.

Each says which version it applies to and why; when a pin moves, check each one still holds
and delete what the new version fixed. Pins: ``apache-tvm==0.27.0.post1``,
``apache-tvm-ffi==0.1.14.post1`` (newer ffi segfaults in MetaSchedule), ``torch==2.13.0``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["deep_copy", "import_tensor_intrinsics", "quiet_torch_export"]


@contextlib.contextmanager
def quiet_torch_export() -> Iterator[None]:
    """Silence torch's own ``isinstance(treespec, LeafSpec) is deprecated`` FutureWarning.

    torch 2.13: ``torch.export`` and ``run_decompositions`` (which TVM 0.27's importer calls)
    warn from torch's pytree code on every call; not the user's to act on, so it is silenced
    around those two calls only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)
        yield


def deep_copy(node: Any) -> Any:
    """A deep copy of a TVM IR node (a PrimFunc), by a JSON round trip.

    TVM 0.27: some schedule primitives (a split after ``parallel``) were seen to modify the
    Schedule's source IRModule in place, which corrupts the caller's function and breaks
    ``Schedule.copy()`` (which tuning design spaces rely on); scheduling a copy is safe.
    """
    import tvm

    return tvm.ir.load_json(tvm.ir.save_json(node))


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (every TuneContext does) without the 30 s it costs.

    TVM 0.27 (``apache-tvm==0.27.0.post1``) with torch 2.13 in the same process.

    Its ~250 TVMScript functions each call ``inspect.stack()``, which resolves a module for
    every frame whose file does not exist (the import machinery's frozen frames) by scanning
    all of ``sys.modules``: with torch loaded, over 30 s here.  The parser only uses the
    frames, so during this import ``inspect.stack`` returns them without source lookups.
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return

    def frames_only(context: int = 1) -> list[inspect.FrameInfo]:
        frame, out = sys._getframe(1), []
        while frame is not None:
            code = frame.f_code
            out.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno,
                                         code.co_name, None, None))
            frame = frame.f_back
        return out

    original = inspect.stack
    inspect.stack = frames_only
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original
