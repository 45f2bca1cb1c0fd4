"""Workarounds for the versions this package pins, in one place.

Each says which version it applies to and why; when a pin moves, check each one still holds
and delete what the new version fixed. Pins: ``apache-tvm==0.27.0.post1``,
``apache-tvm-ffi==0.1.14.post1`` (newer ffi segfaults in MetaSchedule), ``torch==2.13.0``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = [
    "deep_copy", "import_tensor_intrinsics", "quiet_torch_export", "quiet_vm_serialization",
]


@contextlib.contextmanager
def quiet_torch_export() -> Iterator[None]:
    """Silence torch's own ``isinstance(treespec, LeafSpec) is deprecated`` FutureWarning
    and its fake-tensor error log.

    torch 2.13: ``torch.export`` and ``run_decompositions`` (which TVM 0.27's importer calls)
    warn from torch's pytree code on every call; not the user's to act on, so it is silenced
    around those two calls only.
    """
    import logging

    # torch 2.13 also logs a traceback at ERROR level from its fake-tensor shape check before
    # raising; the exception (which the caller reports in its own words) says the same
    fake = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake.level
    fake.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec",
                                    category=FutureWarning)
            yield
    finally:
        fake.setLevel(level)


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


_SCOPE_NOISE = re.compile(r"executable\.cc:\d+: Warning: Scope (Saving|Loaded):\s*$")


@contextlib.contextmanager
def quiet_vm_serialization() -> Iterator[None]:
    """Drop the ``Warning: Scope Saving:`` / ``Scope Loaded:`` lines TVM prints.

    TVM 0.27: the Relax VM executable logs one such line (with an empty scope) per storage
    scope whenever it is saved or loaded, i.e. on every ``export`` and ``load``. They are
    written by C++ to file descriptor 2, so the descriptor is captured for the duration of
    the call and every other line is passed on to ``sys.stderr`` unchanged.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not _SCOPE_NOISE.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
