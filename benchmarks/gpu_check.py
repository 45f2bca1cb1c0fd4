"""One-shot GPU check of the CUDA block-sparse linear kernels: correctness, then speed.

Meant for ONE run on a GPU machine (an H200 here), through ``benchmarks/gpu_check.sh``::

    python benchmarks/gpu_check.py --out results/gpu_check          # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry     # anywhere: build only

1. builds every kernel (``tetris_tvm.schedules.cuda`` rules) for the linear cases 768->3072,
   3072->768, 4096->4096, M in {1, 16, 256, 1024}, blocks 32 and 64, block sparsity in
   {0.5, 0.9}, float16 and float32 (random block masks with an exact kept count, BSR
   form); the CUDA sources are compiled in parallel (nvcc / NVRTC) before they are loaded;
2. correctness: every kernel against torch's ``F.linear`` with the masked dense weight on the
   GPU, plus epilogue checks (bias + GELU, empty block-rows);
3. timing, interleaved per case, median of repeats: ours (TVM ``time_evaluator``), cuBLAS dense
   (torch ``F.linear`` in the same dtype, CUDA events), torch BSR (``to_sparse_bsr`` matmul);
4. JSON in ``--out`` and a table with ``vs_dense`` (cuBLAS time / ours), ``frac_ideal``
   (``vs_dense * (1 - s)``: the fraction of the ideal ``1/(1-s)`` speedup) and ``vs_bsr``
   (torch BSR time / ours).  Targets (recorded, not asserted): float16, blocks 32/64, s = 0.9,
   M >= 256: ``frac_ideal >= 0.6`` and ``vs_bsr >= 2``.

5. a whole model: ``tetris_tvm.compile(target="cuda")`` of a MiniLM-shaped encoder
   (``tetris_tvm.zoo.bert_shaped_encoder``, random weights: the GPU machine has no model files)
   at s = 0.75 and 0.9, 32x32 blocks, in float32, with ``dtype="float16"`` and with
   ``quantize="int8"`` (``__dp4a``); its output against its plan's masked torch model on the
   GPU (int8: the fake-quantised one, on the CPU), and its time against dense torch eager in
   float32 and float16.

6. convs and tuning candidates: block-sparse 3x3 convs (64->128 at 56x56 and 256->256 at
   14x14, batch 8, 32x32 channel blocks, s = 0.9) in float32 and float16 against torch's
   ``F.conv2d`` (cuDNN) on the GPU, correctness and time; and every design space of the CUDA
   tuning search space (``tetris_tvm.schedules.cuda.space``) for one fp16 linear kernel
   (768->3072, M = 256, 32x32, s = 0.9), each checked and timed: how far the best candidate
   is from the default schedule, i.e. what ``tune()`` could gain there.

``--dry-run`` (no GPU needed) builds everything and skips execution; ``--quick`` runs a subset.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a bare checkout (tetris_tvm not pip-installed)
    sys.path.insert(0, str(ROOT))

SHAPES = [(768, 3072), (3072, 768), (4096, 4096)]  # (in, out)
ROWS = [1, 16, 256, 1024]
BLOCKS = [32, 64]
SPARSITIES = [0.5, 0.9]
DTYPES = ["float16", "float32"]
QUICK = dict(shapes=[(768, 3072)], rows=[16, 256], blocks=[32], sparsities=[0.9])


@dataclass
class Case:
    """One linear kernel: ``y (M, out) = x (M, in) @ W.T`` with ``W`` block-sparse."""

    k: int
    n: int
    m: int
    block: int
    sparsity: float
    dtype: str
    tensor_core: bool = False
    build_s: float = 0.0
    max_err: float | None = None
    tol: float | None = None
    ok: bool | None = None
    error: str | None = None
    t_ours: float | None = None
    t_dense: float | None = None
    t_bsr: float | None = None
    bsr_error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Short label."""
        return f"{self.k}->{self.n} M={self.m} b={self.block} s={self.sparsity} {self.dtype}"

    def ratios(self) -> dict[str, float | None]:
        """``vs_dense``, ``frac_ideal``, ``vs_bsr`` (None where a time is missing)."""
        vs_dense = self.t_dense / self.t_ours if self.t_ours and self.t_dense else None
        frac = vs_dense * (1.0 - self.sparsity) if vs_dense else None
        vs_bsr = self.t_bsr / self.t_ours if self.t_ours and self.t_bsr else None
        return {"vs_dense": vs_dense, "frac_ideal": frac, "vs_bsr": vs_bsr}

    def in_target(self) -> bool:
        """Whether the case is one the performance targets speak about."""
        return self.dtype == "float16" and self.sparsity == 0.9 and self.m >= 256


def make_weight(case: Case, rng: np.random.Generator):
    """``(BSRMatrix, dense masked weight float32)`` for ``case``."""
    from tetris_tvm.bench import random_block_mask
    from tetris_tvm.kernels import BSRMatrix

    b = case.block
    mask = random_block_mask((case.n // b, case.k // b), case.sparsity, rng)
    w = (rng.standard_normal((case.n, case.k)) / np.sqrt(case.k)).astype(np.float32)
    if case.dtype == "float16":
        w = w.astype(np.float16).astype(np.float32)
    bsr = BSRMatrix.from_dense(w, b, mask)
    return bsr, bsr.to_dense()


def build_func(case: Case, bsr, bias: bool = False, activation: str | None = None):
    """The PrimFunc and its constant arguments for ``case``."""
    from tetris_tvm.kernels import compute as K
    from tetris_tvm.schedules.cuda import block_sparse_linear_fp16, half_weight_args

    bias_arr = None
    if bias:
        bias_arr = np.linspace(-1, 1, case.n, dtype=np.float32)
    if case.dtype == "float32":
        func = K.block_sparse_linear((case.m, case.k), bsr, bias=bias, activation=activation,
                                     fmt="bsr")
        consts = K.linear_weight_args(bsr, bias_arr, "bsr")
    else:
        func = block_sparse_linear_fp16((case.m, case.k), bsr, bias=bias, activation=activation,
                                        fmt="bsr", dtype=case.dtype)
        consts = half_weight_args(bsr, bias_arr, "bsr", case.dtype)
    return func, consts, bias_arr


# ------------------------------------------------------------------------------ CUDA compile
_BINARIES: dict[str, bytes] = {}


def install_compile_cache() -> str:
    """Wrap TVM's CUDA compile callback with a cache filled by :func:`precompile`."""
    import tvm_ffi

    from tetris_tvm.schedules.cuda.build import ensure_cuda_compiler

    mode = ensure_cuda_compiler()
    from tvm.support import nvcc

    original = nvcc.tvm_callback_cuda_compile

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def cached_compile(code):  # noqa: ANN001, ANN202 - signature fixed by TVM
        key = hashlib.sha256(code.encode()).hexdigest()
        if key in FAILED:
            raise RuntimeError("the CUDA compiler refused this kernel (see CUDA COMPILE FAIL)")
        if key not in _BINARIES:
            _BINARIES[key] = original(code)
        return _BINARIES[key]

    return mode


FAILED: set[str] = set()  # sources nvcc / NVRTC refused (their kernels are reported wrong)


def _compile_one(code: str, arch: str, mode: str) -> tuple[str, bytes]:
    from tvm.support import nvcc

    from tetris_tvm.schedules.cuda import cuda_target

    fmt = "fatbin" if mode == "nvcc" else "cubin"
    with cuda_target(arch):
        binary = nvcc.compile_cuda(code, target_format=fmt, compiler=mode)
    return hashlib.sha256(code.encode()).hexdigest(), bytes(binary)


def precompile(sources: list[str], arch: str, mode: str, workers: int) -> float:
    """Compile the CUDA sources in parallel (threads around nvcc / NVRTC); returns seconds."""
    t0 = time.time()
    todo = {hashlib.sha256(s.encode()).hexdigest(): s for s in sources}
    todo = {k: s for k, s in todo.items() if k not in _BINARIES}

    def one(code: str) -> tuple[str, bytes | None]:
        try:
            return _compile_one(code, arch, mode)
        except Exception as exc:  # noqa: BLE001 - one kernel's failure, reported at its load
            lines = [ln for ln in str(exc).splitlines() if "error" in ln.lower()]
            print(f"CUDA COMPILE FAIL: {(lines or ['?'])[0][:300]}", flush=True)
            return hashlib.sha256(code.encode()).hexdigest(), None

    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        for key, binary in pool.map(one, todo.values()):
            if binary is not None:
                _BINARIES[key] = binary
            else:
                FAILED.add(key)
    return time.time() - t0


# Timing: the samplers of tetris_tvm.bench (tvm_sampler: TVM time_evaluator; torch_sampler
# on the CUDA device: CUDA events; vm_sampler: wall clock, device synchronised), sampled
# round-robin by median_interleaved.


# ------------------------------------------------------------------------------ main
def make_cases(quick: bool) -> list[Case]:
    """All cases of the sweep (or the quick subset)."""
    q = QUICK if quick else {}
    return [
        Case(k, n, m, b, s, dt)
        for (k, n) in q.get("shapes", SHAPES)
        for m in q.get("rows", ROWS)
        for b in q.get("blocks", BLOCKS)
        for s in q.get("sparsities", SPARSITIES)
        for dt in DTYPES
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results directory (JSON + table)")
    parser.add_argument("--dry-run", action="store_true", help="build only, run nothing")
    parser.add_argument("--quick", action="store_true", help="a small subset of the cases")
    parser.add_argument("--compile", action="store_true",
                        help="with --dry-run: also compile every CUDA source with nvcc (catches "
                             "what ptxas refuses, e.g. too much shared memory)")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="stop timing new cases after this many seconds in total")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--model-layers", type=int, default=2,
                        help="encoder layers of the whole-model check (0 skips it)")
    args = parser.parse_args(argv)
    t_start = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    import tvm

    from tetris_tvm.bench import median_interleaved, torch_sampler, tvm_sampler
    from tetris_tvm.schedules.cuda import cuda_target
    from tetris_tvm.schedules.cuda.build import CudaKernel, compile_cuda, cuda_source

    target = cuda_target(args.arch)
    has_gpu = tvm.cuda(0).exist
    if not args.dry_run and not has_gpu:
        print("gpu_check: no CUDA GPU visible to TVM (tvm.cuda(0).exist is False); "
              "use --dry-run to build only", file=sys.stderr)
        return 2
    meta = {
        "host": platform.node(), "python": platform.python_version(),
        "tvm": tvm.__version__, "arch": args.arch, "dry_run": args.dry_run,
    }
    rng = np.random.default_rng(0)

    # ---- 1. build
    cases = make_cases(args.quick)
    built = []
    for case in cases:
        t0 = time.time()
        bsr, w = make_weight(case, rng)
        func, consts, _ = build_func(case, bsr)
        try:
            exe = compile_cuda(func, target)
        except Exception as exc:  # noqa: BLE001 - recorded per case
            case.error = f"build: {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}"
            print(f"BUILD FAIL {case.name}: {case.error}", flush=True)
            continue
        src = cuda_source(exe)
        case.tensor_core = "mma_sync" in src
        case.build_s = time.time() - t0
        built.append((case, bsr, w, consts, exe, src))
    print(f"built {len(built)}/{len(cases)} kernels in {time.time() - t_start:.1f}s "
          f"({sum(c.tensor_core for c, *_ in built)} on tensor cores)", flush=True)

    # epilogue checks: bias + GELU, empty block-rows, both dtypes
    epi = []
    for dtype in DTYPES:
        case = Case(256, 512, 64, 32, 0.5, dtype)
        bsr, _ = make_weight(case, rng)
        mask = bsr.block_mask
        mask[3] = False  # an empty block-row
        from tetris_tvm.kernels import BSRMatrix

        bsr = BSRMatrix.from_dense(bsr.to_dense(), 32, mask)
        func, consts, bias = build_func(case, bsr, bias=True, activation="gelu")
        epi.append((case, bsr, consts, bias, compile_cuda(func, target)))

    model_check = WholeModelCheck(args.arch, args.model_layers, args.quick)
    model_check.build()
    extra = ConvAndSpaceCheck(target, args.quick)
    extra.build(rng)

    if args.dry_run:
        if args.compile:
            sources = ([src for *_, src in built] + [cuda_source(e[-1]) for e in epi]
                       + extra.sources())
            t_cc = precompile(sources, args.arch, "nvcc", args.workers)
            meta.update(compiled=len(sources), compile_failures=len(FAILED), compile_s=t_cc)
            print(f"compiled {len(sources)} CUDA modules with nvcc in {t_cc:.0f}s, "
                  f"{len(FAILED)} refused", flush=True)
        payload = {"meta": meta, "cases": [asdict(c) for c in cases],
                   "whole_model": model_check.rows, **extra.payload()}
        (out_dir / "gpu_check.json").write_text(json.dumps(payload, indent=1))
        print(f"dry run: {len(built)} kernels + {len(epi)} epilogue kernels built; "
              f"nothing executed; JSON in {out_dir}")
        return 0 if len(built) == len(cases) and not FAILED else 1

    import torch
    import torch.nn.functional as F

    meta.update(gpu=torch.cuda.get_device_name(0), torch=torch.__version__)
    mode = install_compile_cache()
    sources = [src for *_, src in built] + [cuda_source(e[-1]) for e in epi] + extra.sources()
    t_cc = precompile(sources, args.arch, mode, args.workers)
    print(f"compiled {len(sources)} CUDA modules with {mode} in {t_cc:.1f}s", flush=True)

    # ---- 2. correctness
    dev = torch.device("cuda")
    tdt = {"float16": torch.float16, "float32": torch.float32}
    kernels = {}
    for case, _bsr, w, consts, exe, _ in built:
        try:
            kern = CudaKernel(None, consts, (case.m, case.n), case.dtype, target, exe)
            x = rng.standard_normal((case.m, case.k)).astype(case.dtype)
            y = kern(x).astype(np.float32)
            ref = F.linear(torch.from_numpy(x.astype(np.float32)).to(dev),
                           torch.from_numpy(w).to(dev)).cpu().numpy()
            scale = float(np.abs(ref).max()) or 1.0
            case.max_err = float(np.abs(y - ref).max() / scale)
            case.tol = 1e-3 if case.dtype == "float32" else 2e-2
            case.ok = bool(np.isfinite(y).all() and case.max_err <= case.tol)
            kernels[id(case)] = (kern, x)
        except Exception as exc:  # noqa: BLE001 - recorded per case
            case.ok = False
            case.error = f"run: {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}"
        if not case.ok:
            print(f"WRONG {case.name}: err={case.max_err} {case.error or ''}", flush=True)
    epilogue = []
    for case, bsr, consts, bias, exe in epi:
        kern = CudaKernel(None, consts, (case.m, case.n), case.dtype, target, exe)
        x = rng.standard_normal((case.m, case.k)).astype(case.dtype)
        yb = kern(x).astype(np.float32)
        b32 = bias.astype(case.dtype).astype(np.float32)
        ref = F.gelu(F.linear(torch.from_numpy(x.astype(np.float32)),
                              torch.from_numpy(bsr.to_dense()), torch.from_numpy(b32))).numpy()
        err = float(np.abs(yb - ref).max() / max(1.0, float(np.abs(ref).max())))
        tol = 1e-4 if case.dtype == "float32" else 2e-2
        epilogue.append({"dtype": case.dtype, "max_err": err, "ok": bool(err <= tol)})
    n_ok = sum(bool(c.ok) for c in cases)
    print(f"correct: {n_ok}/{len(cases)}; epilogue (bias+gelu, empty row): {epilogue}",
          flush=True)

    # ---- 3. timing: the target cases first, so a short time budget still covers them
    for case, _bsr, w, *_ in sorted(built, key=lambda b: not b[0].in_target()):
        if id(case) not in kernels or not case.ok:
            continue
        if time.time() - t_start > args.budget_s:
            case.extra["skipped_timing"] = "time budget"
            continue
        kern, x = kernels[id(case)]
        out = tvm.runtime.empty((case.m, case.n), case.dtype, kern.dev)
        xtorch = torch.from_numpy(x).to(dev)
        wtorch = torch.from_numpy(w).to(dev, tdt[case.dtype])
        candidates = {
            "ours": tvm_sampler(kern.executable.mod, [x, *kern.consts, out], kern.dev, 20),
            "dense": torch_sampler(lambda a=xtorch, b=wtorch: F.linear(a, b), 20, dev),
        }
        try:
            w_bsr = wtorch.to_sparse_bsr((case.block, case.block))
            xtt = xtorch.t().contiguous()
            (w_bsr @ xtt).t()  # noqa: B018 - probe support
            candidates["bsr"] = torch_sampler(lambda a=w_bsr, b=xtt: (a @ b).t(), 20, dev)
        except Exception as exc:  # noqa: BLE001 - not every dtype / shape is supported
            case.bsr_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        times = median_interleaved(candidates, args.repeats)
        case.t_ours, case.t_dense = times["ours"], times["dense"]
        case.t_bsr = times.get("bsr")
        torch.cuda.synchronize()

    # ---- whole model (section 5 of the docstring)
    model_check.run(args.repeats)
    # ---- convs and tuning candidates (section 6)
    extra.run(args.repeats, rng)

    # ---- 4. report
    lines = [f"{'case':46s} {'TC':>3s} {'ok':>3s} {'ours_us':>9s} {'cublas_us':>9s} "
             f"{'bsr_us':>9s} {'vs_dense':>8s} {'frac_ideal':>10s} {'vs_bsr':>7s}"]

    def fmt(v, scale=1.0, spec="9.1f"):
        return format(v * scale, spec) if v is not None else format("-", ">" + spec[:-2])

    target_rows = []
    for c in cases:
        r = c.ratios()
        lines.append(
            f"{c.name:46s} {'y' if c.tensor_core else 'n':>3s} {str(c.ok)[0]:>3s} "
            f"{fmt(c.t_ours, 1e6)} {fmt(c.t_dense, 1e6)} {fmt(c.t_bsr, 1e6)} "
            f"{fmt(r['vs_dense'], 1, '8.2f')} {fmt(r['frac_ideal'], 1, '10.2f')} "
            f"{fmt(r['vs_bsr'], 1, '7.2f')}"
        )
        if c.in_target():
            target_rows.append({
                "case": c.name, **r,
                "meets_frac_ideal_0.6": bool(r["frac_ideal"] and r["frac_ideal"] >= 0.6),
                "meets_2x_torch_bsr": bool(r["vs_bsr"] and r["vs_bsr"] >= 2.0),
            })
    table = "\n".join(lines)
    print(table)
    met = sum(t["meets_frac_ideal_0.6"] and t["meets_2x_torch_bsr"] for t in target_rows)
    print(f"targets (fp16, s=0.9, M>=256): {met}/{len(target_rows)} cases meet both")
    payload = {
        "meta": {**meta, "compile_mode": mode, "compile_s": t_cc,
                 "total_s": time.time() - t_start},
        "cases": [{**asdict(c), **c.ratios()} for c in cases],
        "epilogue": epilogue,
        "targets": target_rows,
        "whole_model": model_check.rows,
        **extra.payload(),
    }
    (out_dir / "gpu_check.json").write_text(json.dumps(payload, indent=1))
    (out_dir / "gpu_check.txt").write_text(table + "\n")
    print(f"total {time.time() - t_start:.0f}s; results in {out_dir}")
    models_ok = all(r.get("ok", True) for r in model_check.rows) and extra.ok()
    return 0 if n_ok == len(cases) and all(e["ok"] for e in epilogue) and models_ok else 1


class WholeModelCheck:
    """Section 5: a MiniLM-shaped encoder compiled for CUDA, checked and timed against torch."""

    SPARSITIES = (0.75, 0.9)
    # int8 (dp4a, dynamic activations): against its fake-quantised reference, where a value on
    # a rounding boundary may land one step apart (docs/int8.md)
    TOL = {"float32": 1e-3, "float16": 5e-2, "int8": 5e-2}

    def __init__(self, arch: str, layers: int, quick: bool) -> None:
        self.arch, self.layers = arch, layers
        self.shape = (2, 32, 384) if quick else (8, 128, 384)
        self.rows: list[dict] = []
        self.compiled: list = []

    def build(self) -> None:
        if self.layers <= 0:
            return
        import torch

        import tetris_tvm
        from tetris_tvm.zoo import bert_shaped_encoder

        self.model = bert_shaped_encoder(self.layers)
        self.x = torch.randn(*self.shape, generator=torch.Generator().manual_seed(0))
        for sparsity, dtype in itertools.product(self.SPARSITIES, self.TOL):
            t0 = time.time()
            row = {"model": f"bert-shaped x{self.layers}", "shape": list(self.shape),
                   "sparsity": sparsity, "dtype": dtype}
            try:
                precision = {"quantize": "int8"} if dtype == "int8" else {"dtype": dtype}
                cm = tetris_tvm.compile(
                    self.model, (self.x,), target={"kind": "cuda", "arch": self.arch},
                    sparsity=sparsity, block_size=(32, 32), **precision,
                )
                row["compile_s"] = time.time() - t0
                row["kernels"] = sorted({r["kernel"] for r in cm.report.layers})
                self.compiled.append((row, cm))
            except Exception as exc:  # noqa: BLE001 - recorded
                row["ok"] = False
                row["error"] = f"build: {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}"
            self.rows.append(row)
            print(f"whole model s={sparsity} {dtype}: {row.get('error') or row['kernels']}",
                  flush=True)

    @staticmethod
    def _key(row: dict) -> str:
        return f"ours_{row['dtype']}_s{row['sparsity']}"

    def run(self, repeats: int) -> None:
        if not self.compiled:
            return
        import copy

        import torch
        import tvm

        from tetris_tvm.bench import median_interleaved, torch_sampler, vm_sampler
        from tetris_tvm.quantization import quantized_reference

        dev = torch.device("cuda")
        x = self.x.to(dev)
        dense = copy.deepcopy(self.model).to(dev)
        half, xh = copy.deepcopy(dense).half(), x.half()
        samplers = {
            "torch_float32": torch_sampler(lambda: dense(x), 5, dev),
            "torch_float16": torch_sampler(lambda: half(xh), 5, dev),
        }
        for row, cm in self.compiled:
            try:
                if row["dtype"] == "int8":  # the fake-quantised masked model, on the CPU
                    with torch.no_grad():
                        ref = quantized_reference(self.model, cm.plan)(self.x).numpy()
                else:
                    masked = copy.deepcopy(self.model)  # the reference: the plan's weights
                    masked.load_state_dict(cm.plan.masked_state_dict(self.model))
                    with torch.no_grad():
                        ref = masked.to(dev)(x).float().cpu().numpy()
                out = cm(self.x)
                out = (out[0] if isinstance(out, tuple | list) else out).float().numpy()
                row["max_err"] = float(np.abs(out - ref).max() / (np.abs(ref).max() or 1.0))
                tol = self.TOL[row["dtype"]]
                row["ok"] = bool(np.isfinite(out).all() and row["max_err"] <= tol)
                cm._ensure_vm()
                args = [tvm.runtime.tensor(self.x.numpy(), cm.device)]
                samplers[self._key(row)] = vm_sampler(cm.vm, args, cm.device, 5)
            except Exception as exc:  # noqa: BLE001 - recorded
                row["ok"] = False
                row["error"] = f"run: {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}"
        with torch.no_grad():
            times = median_interleaved(samplers, repeats)
        for row, _ in self.compiled:
            ours = times.get(self._key(row))
            if ours is None:
                continue
            row["ms"] = ours * 1e3
            for ref_name in ("torch_float32", "torch_float16"):
                row[f"{ref_name}_ms"] = times[ref_name] * 1e3
                row[f"vs_{ref_name}"] = times[ref_name] / ours
            print(f"whole model s={row['sparsity']} {row['dtype']}: ok={row['ok']} "
                  f"err={row['max_err']:.2e} "
                  f"{row['ms']:.2f} ms; torch fp32 {row['torch_float32_ms']:.2f} ms, "
                  f"fp16 {row['torch_float16_ms']:.2f} ms", flush=True)


class ConvAndSpaceCheck:
    """Section 6: half and float32 block-sparse convs vs cuDNN, and the CUDA tuning space."""

    CONVS = [(64, 128, 56), (256, 256, 14)]  # (cin, cout, hw), 3x3, stride 1, pad 1
    SPACE_CASE = (768, 3072, 256, 32, 0.9)  # (in, out, M, block, sparsity), float16
    MAX_SPACES = 24
    TOL = {"float32": 1e-3, "float16": 2e-2}

    def __init__(self, target, quick: bool) -> None:
        self.target, self.quick = target, quick
        self.conv_rows: list[dict] = []
        self.space_rows: list[dict] = []
        self._built: list = []  # (row, exe, consts, x_shape, out_shape, dtype, reference inputs)

    def build(self, rng: np.random.Generator) -> None:
        from tetris_tvm.bench import random_block_mask
        from tetris_tvm.kernels import BSRMatrix
        from tetris_tvm.kernels import compute as K
        from tetris_tvm.kernels.half import half_weight_args
        from tetris_tvm.schedules.cuda import BlockSparseMatmul, block_sparse_linear_fp16
        from tetris_tvm.schedules.cuda.build import compile_cuda
        from tetris_tvm.schedules.cuda.space import linear_configs

        convs = self.CONVS[:1] if self.quick else self.CONVS
        batch, block, sparsity = (2 if self.quick else 8), 32, 0.9
        for cin, cout, hw in convs:
            w = (rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32)
            mask = random_block_mask((cout // block, cin // block), sparsity, rng)
            bsr = BSRMatrix.from_dense(w.reshape(cout, -1), (block, block * 9), mask)
            x_shape, out_shape = (batch, cin, hw, hw), (batch, cout, hw, hw)
            for dtype in ("float32", "float16"):
                row = {"conv": f"{cin}->{cout}@{hw} b{batch}", "dtype": dtype,
                       "sparsity": sparsity}
                try:
                    func = K.block_sparse_conv2d(x_shape, bsr, 3, padding=1, dtype=dtype)
                    consts = (K.conv2d_weight_args(bsr) if dtype == "float32"
                              else half_weight_args(bsr, None, "auto", dtype))
                    exe = compile_cuda(func, self.target)
                except Exception as exc:  # noqa: BLE001 - recorded
                    row["error"] = f"build: {type(exc).__name__}: {str(exc)[-300:]}"
                    self.conv_rows.append(row)
                    continue
                self.conv_rows.append(row)
                ref = bsr.to_dense().reshape(w.shape)
                self._built.append((row, exe, consts, x_shape, out_shape, dtype, ref))
        k, n, m, block, sparsity = self.SPACE_CASE
        if self.quick:
            m = 64
        w = rng.standard_normal((n, k)).astype(np.float32)
        bsr = BSRMatrix.from_dense(w, (block, block),
                                   random_block_mask((n // block, k // block), sparsity, rng))
        func = block_sparse_linear_fp16((m, k), bsr, fmt="bsr")
        consts = half_weight_args(bsr, None, "bsr", "float16")
        configs = linear_configs(func, self.target)
        spaces = BlockSparseMatmul().apply(func, self.target, True)
        spaces = spaces[: 6 if self.quick else self.MAX_SPACES]
        import tvm

        for i, (tile, sch) in enumerate(zip(configs, spaces, strict=False)):
            row = {"kernel": f"{k}->{n} M={m} b={block} s={sparsity} float16",
                   "config": str(tile), "default": i == 0}
            try:
                exe = tvm.compile(sch.mod, target=self.target)
            except Exception as exc:  # noqa: BLE001 - recorded
                row["error"] = f"build: {type(exc).__name__}: {str(exc)[-300:]}"
                self.space_rows.append(row)
                continue
            self.space_rows.append(row)
            self._built.append((row, exe, consts, (m, k), (m, n), "float16", bsr.to_dense()))
        print(f"section 6: {len(self.conv_rows)} conv kernels, {len(self.space_rows)} tuning "
              f"candidates built", flush=True)

    def sources(self) -> list[str]:
        from tetris_tvm.schedules.cuda.build import cuda_source

        return [cuda_source(exe) for _, exe, *_ in self._built]

    def run(self, repeats: int, rng: np.random.Generator) -> None:
        import torch
        import torch.nn.functional as F
        import tvm

        from tetris_tvm.bench import median_interleaved, torch_sampler, tvm_sampler
        from tetris_tvm.schedules.cuda.build import CudaKernel

        dev = torch.device("cuda")
        tdt = {"float16": torch.float16, "float32": torch.float32}
        for row, exe, consts, x_shape, out_shape, dtype, wref in self._built:
            try:
                kern = CudaKernel(None, consts, out_shape, dtype, self.target, exe)
                x = rng.standard_normal(x_shape).astype(dtype)
                xt = torch.from_numpy(x).to(dev)
                wt = torch.from_numpy(wref).to(dev, tdt[dtype])
                conv = len(x_shape) == 4
                ref_fn = ((lambda a=xt, b=wt: F.conv2d(a, b, padding=1)) if conv
                          else (lambda a=xt, b=wt: F.linear(a, b)))
                ref = ref_fn().float().cpu().numpy()
                y = kern(x).astype(np.float32)
                scale = float(np.abs(ref).max()) or 1.0
                row["max_err"] = float(np.abs(y - ref).max() / scale)
                row["ok"] = bool(np.isfinite(y).all() and row["max_err"] <= self.TOL[dtype])
                out = tvm.runtime.empty(tuple(out_shape), dtype, kern.dev)
                times = median_interleaved({
                    "ours": tvm_sampler(kern.executable.mod, [x, *kern.consts, out], kern.dev,
                                        20),
                    "torch_dense": torch_sampler(ref_fn, 20, dev),
                }, repeats)
                row["ours_us"], row["torch_dense_us"] = (times["ours"] * 1e6,
                                                         times["torch_dense"] * 1e6)
                row["vs_dense"] = times["torch_dense"] / times["ours"]
            except Exception as exc:  # noqa: BLE001 - recorded per kernel
                row["ok"] = False
                row["error"] = f"run: {type(exc).__name__}: {str(exc)[-300:]}"
            print(f"section 6 {row.get('conv') or row['config']}: ok={row.get('ok')} "
                  f"ours={row.get('ours_us', float('nan')):.1f}us "
                  f"vs dense {row.get('vs_dense', float('nan')):.2f}x", flush=True)
        timed = [r for r in self.space_rows if r.get("ours_us") and r.get("ok")]
        default = [r for r in timed if r["default"]]
        if timed and default:
            best = min(timed, key=lambda r: r["ours_us"])
            print(f"tuning space: best {best['ours_us']:.1f}us ({best['config']}) vs default "
                  f"{default[0]['ours_us']:.1f}us", flush=True)

    def ok(self) -> bool:
        return all(r.get("ok", True) for r in self.conv_rows + self.space_rows)

    def payload(self) -> dict:
        return {"convs": self.conv_rows, "tuning_space": self.space_rows}


if __name__ == "__main__":
    sys.exit(main())
