"""Exported libraries on disk: integrity checks before loading, and atomic writes.

The dynamic loader trusts a shared library completely: a file cut short by an interrupted
copy can kill the process with a bus error when its missing pages are touched, and a path
loaded once in a process keeps returning the first library loaded from it. So before a
library reaches the loader it is checked here: its ELF structure (every segment and section
inside the file, built for this machine's architecture) and, when the export's metadata
recorded them, its size and SHA-256. It is then loaded from a private copy named by its
content, so a re-exported path loads the new library. Exports are written to a temporary
name and renamed, so the final path never holds half a file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["LibraryError", "check_library", "describe", "elf_problem", "partial_path",
           "private_copy"]

_MACHINES = {3: "x86 (32-bit)", 40: "arm (32-bit)", 62: "x86_64", 183: "aarch64", 243: "riscv"}
_HOST = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "i686": 3, "i386": 3,
         "riscv64": 243}


class LibraryError(ValueError):
    """A library file that must not be loaded (damaged, foreign or not what its metadata
    describes)."""


def describe(data: bytes) -> dict[str, Any]:
    """Size and SHA-256 of a library's bytes (what export records beside it)."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def elf_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete ELF shared library for this machine, or None."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return "not a shared library (no ELF header)"
    klass, order = data[4], data[5]
    if klass not in (1, 2) or order not in (1, 2):
        return "not a shared library (a damaged ELF header)"
    e = "<" if order == 1 else ">"
    if klass == 2:
        head = struct.unpack_from(e + "HHIQQQIHHHHHH", data, 16)
        ph_fmt, sh_fmt = e + "IIQQQQQQ", e + "IIQQQQIIQQ"
    else:
        head = struct.unpack_from(e + "HHIIIIIHHHHHH", data, 16)
        ph_fmt, sh_fmt = e + "IIIIIIII", e + "IIIIIIIIII"
    e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = head
    if e_type != 3:  # ET_DYN
        return "not a shared library (an ELF file of another kind)"
    host = _HOST.get(platform.machine().lower())
    if host is not None and machine != host:
        return (f"built for {_MACHINES.get(machine, f'machine {machine}')}, and this machine "
                f"is {platform.machine()} (cross-compiled for a device: run it there)")
    size = len(data)
    if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
        return f"truncated ({size} bytes: its ELF tables lie beyond the end of the file)"
    for i in range(phnum):
        fields = struct.unpack_from(ph_fmt, data, phoff + i * phentsize)
        offset, filesz = (fields[2], fields[5]) if klass == 2 else (fields[1], fields[4])
        if fields[0] == 1 and offset + filesz > size:  # PT_LOAD
            return f"truncated ({size} bytes: a loadable segment ends at {offset + filesz})"
    for i in range(shnum):
        fields = struct.unpack_from(sh_fmt, data, shoff + i * shentsize)
        sh_type, offset, sh_size = fields[1], fields[4], fields[5]
        if sh_type != 8 and sh_type != 0 and offset + sh_size > size:  # not NOBITS / NULL
            return f"truncated ({size} bytes: section {i} ends at {offset + sh_size})"
    return None


def check_library(path: Path, recorded: dict[str, Any] | None) -> bytes:
    """The bytes of the library at ``path``, or a :class:`LibraryError` naming the file when
    it is damaged, foreign, or not the library ``recorded`` (size and SHA-256) describes."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise LibraryError(f"{path}: a folder, not a compiled model") from None
    except OSError as e:
        raise LibraryError(f"{path}: cannot read it ({e.strerror})") from None
    if recorded:
        want = int(recorded.get("bytes", -1))
        if want >= 0 and want != len(data):
            raise LibraryError(
                f"{path}: {len(data)} bytes, but its metadata describes a {want}-byte library: "
                "the file is truncated or was replaced (copy or export it again)")
        digest = recorded.get("sha256")
        if digest and hashlib.sha256(data).hexdigest() != digest:
            raise LibraryError(
                f"{path}: its contents do not match its metadata ({path.name}.tetris.json "
                "belongs to another export): keep each .so with its own .tetris.json, or "
                "export the model again")
    problem = elf_problem(data)
    if problem is not None:
        raise LibraryError(f"{path}: {problem}")
    return data


@contextmanager
def private_copy(data: bytes, suffix: str = ".so") -> Iterator[Path]:
    """A file holding ``data`` under a name of its own, removed afterwards (a loaded library
    stays mapped after its file is gone)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tetris-tvm-load-"))
    path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    try:
        path.write_bytes(data)
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(folder)


def partial_path(path: Path) -> Path:
    """Where an export writes before renaming to ``path`` (same folder, same suffix)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
