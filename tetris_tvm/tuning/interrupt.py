"""Ctrl-C during a tuning run: stop between batches and keep every record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["StopOnCtrlC", "TuningStopped"]


class TuningStopped(Exception):
    """Raised by the progress callback to end a run the user interrupted."""


class StopOnCtrlC:
    """While active, Ctrl-C asks the tuning loop to stop between two batches.

    A KeyboardInterrupt raised inside MetaSchedule's C++ loop aborted the whole process
    (std::terminate); stopping between batches keeps the process and every record.  Python
    runs a signal handler only when the main thread executes Python code, and MetaSchedule's
    search can stay in C++ for minutes on a loaded machine (seen: no reaction in 6 min), so
    the signal is read by a watcher thread through ``signal.set_wakeup_fd`` instead: the
    first Ctrl-C is acknowledged at once and the run stops at the next Python callback
    (build, predict, measured batch); a second Ctrl-C ends the process at once, keeping the
    records already written (each is appended to the database when measured).  LLVM code in
    the process briefly installs its own SIGINT handler (measured: 5 of 120 signals sent during
    a run were lost); pressing again is the remedy (it counts as the first).
    """

    def __init__(self, work_dir: Path | str | None = None) -> None:
        self.requested = False
        self.work_dir = work_dir
        self._previous: Any = None
        self._previous_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: Any = None

    def _on_signal(self) -> None:
        if self.requested:
            where = f" in {self.work_dir}" if self.work_dir else ""
            print(f"\nCtrl-C again: aborted; the records measured so far are kept{where}",
                  flush=True)
            os._exit(130)
        self.requested = True
        print("\nCtrl-C: stopping before the next batch (again to abort)", flush=True)

    def _watch(self, read_fd: int) -> None:
        import signal

        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:  # the write end was closed: the run is over
                return
            for byte in data:
                if byte == signal.SIGINT:
                    self._on_signal()

    def __enter__(self) -> StopOnCtrlC:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        # Python's own handler must not raise KeyboardInterrupt (it would end the C++ loop);
        # the watcher does the work.
        self._previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                                        name="tetris-tvm-ctrl-c")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        signal.signal(signal.SIGINT, self._previous)
        read_fd, write_fd = self._pipe
        os.close(write_fd)
        self._thread.join(timeout=5)
        os.close(read_fd)
        self._pipe = None


