"""A deploy bundle: one folder to copy to a device and run there, without Python or torch.

``export_bundle(cm, "bundle/")`` (or ``CompiledModel.export_bundle``, or
``tetris-tvm compile ... --bundle DIR``) writes::

    bundle/
      model.so            the compiled model (cross-compiled for the target's architecture)
      model.so.tetris.json  its metadata (inputs, outputs, per-layer report)
      inputs.txt          one line per input: name, dtype, shape (-1: dynamic) -- the runner's
                          check of every .npy it is given
      lib/                the TVM runtime for the device: libtvm_runtime.so, libtvm_ffi.so
      run_model           the runner, built for the device (rpath $ORIGIN/lib)
      runner.cc           its source (build it on the device if you prefer)
      README.txt          how to copy it and run it

The runtime libraries come from the installed TVM when the target is this machine's
architecture; for another one (aarch64) from the matching ``apache-tvm`` /
``apache-tvm-ffi`` wheels: a folder you give (``runtime_dir``: the two libraries, or the two
wheels), else downloaded with pip into a cache. When neither works, the export fails here with
what to do, not later on the device.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["RUNTIME_LIBS", "export_bundle", "runtime_libraries", "target_arch"]

RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
_WHEELS = {"libtvm_runtime.so": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
           "libtvm_ffi.so": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so")}
_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
_DEFAULT_CROSS = {"aarch64": "aarch64-linux-gnu-g++"}


def target_arch(target: Any) -> str:
    """The CPU architecture a compiled model's target runs on (``x86_64``, ``aarch64``...)."""
    triple = str(target.attrs.get("mtriple", "") or "") if target.kind.name == "llvm" else ""
    if not triple:
        return platform.machine()
    arch = triple.split("-")[0]
    return "aarch64" if arch in ("aarch64", "arm64") else arch


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"apache-tvm": version("apache-tvm"), "apache-tvm-ffi": version("apache-tvm-ffi")}


def _from_wheels(folder: Path, arch: str, out: Path) -> bool:
    """Extract the runtime libraries from the wheels in ``folder``; True when both were found."""
    found = 0
    for lib, (dist, member) in _WHEELS.items():
        prefix = dist.replace("-", "_") + "-"
        wheels = [w for w in folder.glob("*.whl") if w.name.startswith(prefix) and arch in w.name]
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                if member in z.namelist():
                    (out / lib).write_bytes(z.read(member))
                    found += 1
                    break
    return found == len(_WHEELS)


def runtime_libraries(arch: str, out: Path, runtime_dir: str | os.PathLike[str] | None = None,
                      download: bool = True) -> list[Path]:
    """Copy TVM's runtime libraries for ``arch`` into ``out``; the paths written.

    Order: ``runtime_dir`` (the libraries themselves, or the wheels); this machine's installed
    TVM when ``arch`` is this machine's; the pip cache of earlier downloads; a pip download.
    """
    out.mkdir(parents=True, exist_ok=True)
    if runtime_dir is not None:
        folder = Path(runtime_dir)
        if all((folder / lib).exists() for lib in RUNTIME_LIBS):
            for lib in RUNTIME_LIBS:
                shutil.copy2(folder / lib, out / lib)
            return [out / lib for lib in RUNTIME_LIBS]
        if _from_wheels(folder, arch, out):
            return [out / lib for lib in RUNTIME_LIBS]
        raise ValueError(f"runtime_dir {folder} has neither {' and '.join(RUNTIME_LIBS)} nor "
                         f"the apache-tvm / apache-tvm-ffi wheels for {arch}")
    if arch == platform.machine():
        shutil.copy2(_package_dir("tvm") / "lib" / "libtvm_runtime.so", out / "libtvm_runtime.so")
        shutil.copy2(_package_dir("tvm_ffi") / "lib" / "libtvm_ffi.so", out / "libtvm_ffi.so")
        return [out / lib for lib in RUNTIME_LIBS]
    if arch not in _PLATFORMS:
        raise ValueError(f"no TVM runtime wheels are known for {arch}; build TVM's runtime for "
                         "it and pass runtime_dir= (a folder with libtvm_runtime.so and "
                         "libtvm_ffi.so)")
    versions = _versions()
    cache = Path(os.environ.get("TETRIS_TVM_CACHE", Path.home() / ".cache" / "tetris-tvm"))
    wheels = cache / "wheels" / f"{arch}-tvm{versions['apache-tvm']}"
    wheels.mkdir(parents=True, exist_ok=True)
    if _from_wheels(wheels, arch, out):
        return [out / lib for lib in RUNTIME_LIBS]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", _PLATFORMS[arch], "--python-version",
               f"{sys.version_info.major}.{sys.version_info.minor}", "-d", str(wheels),
               *(f"{d}=={v}" for d, v in versions.items())]
    why = "downloading is off (download=False)"
    if download:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0 and _from_wheels(wheels, arch, out):
            return [out / lib for lib in RUNTIME_LIBS]
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["pip failed"]
        why = f"pip download failed: {why[0]}"
    raise RuntimeError(
        f"the TVM runtime for {arch} was not found ({why}). Download the wheels on a machine "
        f"with internet access ({' '.join(command[2:])}) and pass that folder as runtime_dir "
        "(or --runtime-dir)"
    )


def _ffi_include() -> Path:
    return _package_dir("tvm_ffi") / "include"


def _compiler_for(arch: str, cross_compiler: str | None) -> str:
    if cross_compiler:
        return cross_compiler
    if arch == platform.machine():
        for cxx in (os.environ.get("CXX"), "c++", "g++", "clang++"):
            if cxx and shutil.which(cxx):
                return cxx
        raise RuntimeError("no C++ compiler found to build the runner (set CXX)")
    default = _DEFAULT_CROSS.get(arch)
    if default and shutil.which(default):
        return default
    raise RuntimeError(f"building for {arch} needs a cross compiler: pass cross_compiler= "
                       f"(e.g. {default or 'an <arch>-linux-gnu-g++'}; Debian: apt install "
                       f"g++-{arch.replace('_', '-')}-linux-gnu)")


def _build_runner(cxx: str, source: Path, out: Path, lib_dir: Path) -> None:
    command = [cxx, "-std=c++17", "-O2", f"-I{_ffi_include()}", str(source), "-o", str(out),
               f"-L{lib_dir}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
               "-Wl,-rpath,$ORIGIN/lib"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the runner failed ({' '.join(command)}):\n"
                           f"{done.stderr[-2000:]}")


def _readme(arch: str, names: list[str], threads: Any) -> str:
    files = " ".join(f"{n}.npy" for n in names)
    return f"""tetris-tvm deploy bundle ({arch})

Runs the compiled model with the TVM runtime alone: no Python, no torch.

1. Copy this folder to the device:      scp -r bundle/ device:~/model
2. On the device, run it on .npy inputs:  cd ~/model && ./run_model model.so {files}
   (inputs in the order and of the shapes listed in inputs.txt; outputs are written as
   output0.npy, ... to the folder given with --out, default the current one)
3. Latency over N runs:                   ./run_model model.so --runs 100 {files}

Threads: TVM_NUM_THREADS (the model was compiled for {threads} cores; more than that are not
used). run_model --help lists the options. runner.cc is the runner's source; build it on
the device with: c++ -std=c++17 -O2 -I<tvm_ffi include> runner.cc -o run_model -Llib
-Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,-rpath,'$ORIGIN/lib'
"""


def export_bundle(cm: Any, directory: str | os.PathLike[str], cross_compiler: str | None = None,
                  runtime_dir: str | os.PathLike[str] | None = None,
                  download: bool = True) -> Path:
    """Write a deploy bundle of compiled model ``cm`` into ``directory`` (see the module doc).

    Args:
        cm: a :class:`tetris_tvm.compiler.CompiledModel` for a CPU target; for another
            architecture compile with e.g. ``target={"kind": "llvm", "mtriple":
            "aarch64-linux-gnu", "num-cores": 4}``.
        cross_compiler: C++ compiler for the device (default: this machine's for its own
            architecture, ``aarch64-linux-gnu-g++`` for aarch64).
        runtime_dir: where the device's TVM runtime is (the two libraries, or the wheels).
        download: allow ``pip download`` of the runtime wheels when needed.

    Returns:
        the bundle folder.
    """
    if cm.target.kind.name != "llvm":
        raise ValueError(f"a bundle runs on a CPU: compile for an llvm target, not "
                         f"{cm.target.kind.name}")
    specs = cm.meta_inputs()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    arch = target_arch(cm.target)
    cxx = _compiler_for(arch, cross_compiler)  # fails before anything slow
    with tempfile.TemporaryDirectory() as scratch:
        libs = runtime_libraries(arch, Path(scratch) / "lib", runtime_dir, download)
        (out / "lib").mkdir(exist_ok=True)
        for lib in libs:
            shutil.copy2(lib, out / "lib" / lib.name)
    cross = cxx if arch != platform.machine() else None
    cm.export(out / "model.so", cross_compiler=cross)
    lines = ["# name dtype shape... (-1: dynamic)"]
    for spec in specs:
        dims = " ".join("-1" if d is None else str(d) for d in spec["shape"])
        lines.append(f"{spec['name']} {spec['dtype']} {dims}".rstrip())
    (out / "inputs.txt").write_text("\n".join(lines) + "\n")
    source = Path(__file__).with_name("runner.cc")
    shutil.copy2(source, out / "runner.cc")
    _build_runner(cxx, out / "runner.cc", out / "run_model", out / "lib")
    threads = cm.target.attrs.get("num-cores", "all")
    (out / "README.txt").write_text(_readme(arch, [s["name"] for s in specs], threads))
    sizes = {p.name: p.stat().st_size for p in [out / "model.so", *(out / "lib").iterdir(),
                                                 out / "run_model"]}
    (out / "bundle.json").write_text(json.dumps({"arch": arch, "bytes": sizes}, indent=1))
    return out
