"""A hostile-but-fair probe of the public API and the CLI.

Each case tries one thing a user might do (a bad argument, a damaged file, a model that
shares its weights, many threads, NaN inputs, ...) and is judged:

- **good**: a correct result (the case checks it against the masked reference, or whatever
  it computes), or, for bad input, an error in our words (a ValueError / TypeError /
  FileNotFoundError ... whose message names the problem; the CLI: one ``error:`` line and a
  non-zero exit, no traceback);
- **poor**: an error, but in someone else's words (TVM, torch or Python internals), or a
  refusal of something that should work;
- **bad**: a wrong result, a crash, stale data, or bad input accepted without a word.

``tests/test_reliability.py`` runs every case and wants each one good. Run this file to print
the table: ``python tests/reliability_probe.py [--only AREA] [--verbose]``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# the CLI cases name this file's factories as "reliability_probe:mlp"
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

# messages that are not ours: TVM / torch / Python internals leaking to the user
_INTERNAL = re.compile(
    r"Check failed|InternalError|TVMError|tvm\.|relax\.|tirx|\bffi\b|Traceback|"
    r"\[enforce fail|match_cast|Binary operators|register_file|NoneType|"
    r"object has no attribute|unexpected keyword|positional argument|"
    r"BadZipFile|zipfile|KeyError|not subscriptable|invalid literal|"
    r"ld: cannot|collect2|inline_container",
)
_OUR_TYPES = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
              PermissionError, RuntimeError, OSError)


class Wrong(AssertionError):
    """A case computed something wrong (or accepted bad input silently)."""


@dataclass
class Case:
    name: str
    area: str
    run: Callable[[Path], Any]
    expect: str  # "result" | "error" | "either"
    match: str | None = None  # an error's message must match this (re.search)
    isolate: bool = False  # run in a subprocess: it may take the interpreter down


@dataclass
class Verdict:
    case: str
    area: str
    verdict: str  # good | poor | bad
    detail: str


CASES: list[Case] = []


def case(area: str, expect: str, match: str | None = None, isolate: bool = False
         ) -> Callable[[Callable[[Path], Any]], Callable[[Path], Any]]:
    def register(fn: Callable[[Path], Any]) -> Callable[[Path], Any]:
        CASES.append(Case(fn.__name__, area, fn, expect, match, isolate))
        return fn

    return register


def _our_words(e: BaseException) -> bool:
    text = f"{e}"
    if isinstance(e, SystemExit):
        return True  # the CLI's own exit (judged by run_cli)
    if not isinstance(e, _OUR_TYPES) or not text.strip():
        return False
    return _INTERNAL.search(text) is None


def judge(c: Case, tmp: Path) -> Verdict:
    if c.isolate:
        return _judge_isolated(c, tmp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c.run(tmp)
    except Wrong as e:
        return Verdict(c.name, c.area, "bad", f"wrong: {e}")
    except BaseException as e:  # noqa: BLE001 - judging every outcome
        if isinstance(e, KeyboardInterrupt):
            raise
        text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if c.expect == "result":
            return Verdict(c.name, c.area, "poor", f"refused: {text}")
        if not _our_words(e):
            return Verdict(c.name, c.area, "poor", f"raw: {text}")
        if c.match and not re.search(c.match, str(e), re.S):
            return Verdict(c.name, c.area, "poor", f"vague ({c.match!r} not said): {text}")
        return Verdict(c.name, c.area, "good", text)
    if c.expect == "error":
        return Verdict(c.name, c.area, "bad", "accepted silently")
    return Verdict(c.name, c.area, "good", "correct result")


def _judge_isolated(c: Case, tmp: Path) -> Verdict:
    here = str(Path(__file__).parent)
    code = (f"import sys, pathlib; sys.path.insert(0, {here!r}); "
            "import reliability_probe as p; "
            f"c = [c for c in p.CASES if c.name == {c.name!r}][0]; c.isolate = False; "
            f"v = p.judge(c, pathlib.Path({str(tmp)!r})); print('VERDICT', v.verdict, v.detail)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("VERDICT ")]
    if r.returncode < 0 or not lines:
        return Verdict(c.name, c.area, "bad",
                       f"process died (exit {r.returncode}): {r.stderr.strip()[-300:]}")
    _, verdict, *detail = lines[-1].split(" ", 2)
    return Verdict(c.name, c.area, verdict, " ".join(detail))


# ---------------------------------------------------------------------------------------------
# small models, built once


def _torch():
    import torch

    return torch


def mlp(seed: int = 0):
    torch = _torch()
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 8)).eval()


def x_mlp():
    torch = _torch()
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 24, generator=g)


@functools.cache
def compiled_mlp():
    import tetris_tvm

    model = mlp()
    cm = tetris_tvm.compile(model, (x_mlp(),), sparsity=0.5, block_size=(8, 8), progress=False)
    return model, cm


@functools.cache
def exported_mlp_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="probe-export-"))
    _, cm = compiled_mlp()
    cm.export(d / "m.so")
    return d


def masked_reference(model, plan):
    import copy

    return plan.apply(copy.deepcopy(model), keep=False)


def close(got, want, tol: float = 1e-4, what: str = "output") -> None:
    got = np.asarray(got.detach() if hasattr(got, "detach") else got, dtype=np.float64)
    want = np.asarray(want.detach() if hasattr(want, "detach") else want, dtype=np.float64)
    if got.shape != want.shape:
        raise Wrong(f"{what}: shape {got.shape} != {want.shape}")
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    if not np.array_equal(nan_got, nan_want):
        raise Wrong(f"{what}: NaN at {int(nan_got.sum())} places, reference "
                    f"{int(nan_want.sum())}")
    g, w = got[~nan_got], want[~nan_want]
    if g.size and not np.allclose(g, w, rtol=tol, atol=tol * max(1.0, float(np.abs(w).max()))):
        rel = float(np.abs(g - w).max() / max(float(np.abs(w).max()), 1e-12))
        raise Wrong(f"{what}: differs from the reference by {rel:.3g} relative")


def compile_and_check(model, inputs, tol: float = 1e-4, **kw):
    """Compile, and check the compiled model against its masked reference."""
    import tetris_tvm

    torch = _torch()
    kw.setdefault("progress", False)
    cm = tetris_tvm.compile(model, inputs, **kw)
    ref = masked_reference(model, cm.plan)
    with torch.no_grad():
        want = ref(*inputs)
    got = cm(*inputs)
    if isinstance(want, (tuple, list)):
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, tol, f"output {i}")
    else:
        close(got, want, tol)
    return cm


def run_cli(argv: list[str]) -> str:
    """Run the CLI in this process; an error must be a non-zero exit with a short message on
    stderr (no traceback). Raises SystemExit-like ValueError for judging."""
    from tetris_tvm.cli import main

    err = io.StringIO()
    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as e:
        code = e.code
        text = err.getvalue() + (e.code if isinstance(e.code, str) else "")
        if code in (0, None):
            return out.getvalue()
        if "Traceback" in text:
            raise RuntimeError(f"traceback on stderr: {text[-300:]}") from None
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if not lines:
            raise RuntimeError("non-zero exit with nothing on stderr") from None
        raise ValueError(lines[-1]) from None
    if code:
        text = err.getvalue()
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if "Traceback" in text or not lines:
            raise RuntimeError(f"exit {code}: {text[-300:]}")
        raise ValueError(lines[-1])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# arguments: prune_weight


def _w(shape=(32, 48), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@case("arguments", "error", r"sparsity")
def prune_weight_sparsity_negative(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=8, sparsity=-0.1)


@case("arguments", "error", r"sparsity")
def prune_weight_sparsity_one(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=8, sparsity=1.0)


@case("arguments", "error", r"sparsity")
def prune_weight_sparsity_nan(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=8, sparsity=float("nan"))


@case("arguments", "error", r"sparsity")
def prune_weight_sparsity_string(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=8, sparsity="half")


@case("arguments", "error", r"block")
def prune_weight_block_string(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size="16", sparsity=0.5)


@case("arguments", "error", r"block")
def prune_weight_block_float(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=(2.5, 16), sparsity=0.5)


@case("arguments", "error", r"block")
def prune_weight_block_negative(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=(-8, 8), sparsity=0.5)


@case("arguments", "error", r"block")
def prune_weight_block_three(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=(8, 8, 8), sparsity=0.5)


@case("arguments", "error", r"block")
def prune_weight_block_none(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=None, sparsity=0.5)


@case("arguments", "error", r"block")
def prune_weight_block_bool(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=True, sparsity=0.5)


@case("arguments", "error", r"block")
def prune_weight_block_larger_than_weight(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w((8, 8)), block_size=16, sparsity=0.5)


@case("arguments", "result")
def prune_weight_whole_axis_block(tmp):
    import tetris_tvm
    lp = tetris_tvm.prune_weight(_w(), block_size=(0, 8), sparsity=0.5)
    if lp.block_size[:2] != (32, 8):
        raise Wrong(f"block (0, 8) should be the whole output axis, got {lp.block_size}")


@case("arguments", "error", r"axes|1-D|shape")
def prune_weight_vector(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(np.ones(16, np.float32), block_size=4, sparsity=0.5)


@case("arguments", "error", r"NaN|Inf|finite")
def prune_weight_nan_weight(tmp):
    import tetris_tvm
    w = _w()
    w[3, 4] = np.nan
    tetris_tvm.prune_weight(w, block_size=8, sparsity=0.5)


@case("arguments", "error", r"dtype|floating")
def prune_weight_int_weight(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(np.ones((16, 16), np.int32), block_size=4, sparsity=0.5)


@case("arguments", "either", r"empty|zero|size")
def prune_weight_empty(tmp):
    import tetris_tvm
    lp = tetris_tvm.prune_weight(np.zeros((0, 16), np.float32), block_size=4, sparsity=0.5)
    if lp.mask.shape != (0, 16):
        raise Wrong("mask shape")


@case("arguments", "result")
def prune_weight_all_zero(tmp):
    import tetris_tvm
    lp = tetris_tvm.prune_weight(np.zeros((16, 16), np.float32), block_size=4, sparsity=0.5)
    if lp.kept_blocks != 8:
        raise Wrong(f"kept {lp.kept_blocks} of 16 blocks at sparsity 0.5")


@case("arguments", "error", r"reorder|bool")
def prune_weight_reorder_string(tmp):
    import tetris_tvm
    tetris_tvm.prune_weight(_w(), block_size=8, sparsity=0.5, reorder="no")


# ---------------------------------------------------------------------------------------------
# arguments: prune


@case("arguments", "error", r"block")
def prune_block_string(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size="16")


@case("arguments", "error", r"block")
def prune_block_float(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size=(2.5, 16))


@case("arguments", "error", r"sparsity")
def prune_sparsity_too_high(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=1.5, block_size=8)


@case("arguments", "error", r"Module|model")
def prune_not_a_model(tmp):
    import tetris_tvm
    tetris_tvm.prune(lambda x: x, sparsity=0.5, block_size=8)


@case("arguments", "result")
def prune_model_without_layers(tmp):
    import tetris_tvm
    torch = _torch()
    plan = tetris_tvm.prune(torch.nn.ReLU(), sparsity=0.5, block_size=8)
    if len(plan) != 0:
        raise Wrong("a model without layers has no plan")


@case("arguments", "error", r"override|sparsty")
def prune_override_unknown_key(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8, overrides={"0.*": {"sparsty": 0.9}})


@case("arguments", "error", r"calibration")
def prune_reconstruct_without_calibration(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8, reconstruct=True)


@case("arguments", "error", r"allocation")
def prune_allocation_bogus(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8, allocation="bogus",
                     calibration=[x_mlp()])


@case("arguments", "error", r"importance")
def prune_importance_bogus(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8, importance="bogus",
                     calibration=[x_mlp()])


@case("arguments", "error", r"calibration")
def prune_calibration_empty(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8, calibration=[], reconstruct=True)


@case("arguments", "error", r"calibration|shape|batch")
def prune_calibration_wrong_shape(tmp):
    import tetris_tvm
    torch = _torch()
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8, calibration=[torch.randn(4, 25)],
                     reconstruct=True)


@case("arguments", "error", r"solver")
def prune_solver_bogus(tmp):
    import tetris_tvm
    tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8, solver="magic")


@case("arguments", "either", r"block|sparsity|prun")
def prune_block_larger_than_every_layer_warns(tmp):
    """A block larger than the layer leaves it dense: that must be said, not silent."""
    import tetris_tvm
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tetris_tvm.prune(mlp(), sparsity=0.5, block_size=64)
    if not any("block" in str(x.message) for x in w):
        raise Wrong("block larger than every layer: no warning")


# ---------------------------------------------------------------------------------------------
# arguments: compile


def _compile(**kw):
    import tetris_tvm
    kw.setdefault("progress", False)
    return tetris_tvm.compile(mlp(), (x_mlp(),), **kw)


@case("arguments", "error", r"block")
def compile_block_string(tmp):
    _compile(sparsity=0.5, block_size="16")


@case("arguments", "error", r"block")
def compile_block_float(tmp):
    _compile(sparsity=0.5, block_size=(2.5, 16))


@case("arguments", "error", r"block")
def compile_block_negative(tmp):
    _compile(sparsity=0.5, block_size=-8)


@case("arguments", "error", r"sparsity")
def compile_sparsity_one(tmp):
    _compile(sparsity=1.0, block_size=8)


@case("arguments", "error", r"target")
def compile_target_bogus(tmp):
    _compile(sparsity=0.5, block_size=8, target="bogus")


@case("arguments", "error", r"target")
def compile_target_number(tmp):
    _compile(sparsity=0.5, block_size=8, target=42)


@case("arguments", "error", r"dynamic_batch")
def compile_dynamic_batch_negative(tmp):
    _compile(sparsity=0.5, block_size=8, dynamic_batch=-1)


@case("arguments", "result")
def compile_dynamic_batch_from_batch_one(tmp):
    import tetris_tvm
    torch = _torch()
    model = mlp()
    x1 = x_mlp()[:1]
    cm = tetris_tvm.compile(model, (x1,), sparsity=0.5, block_size=8, dynamic_batch=True,
                            progress=False)
    ref = masked_reference(model, cm.plan)
    x3 = torch.randn(3, 24)
    close(cm(x3), ref(x3).detach())


@case("arguments", "error", r"dtype")
def compile_dtype_bogus(tmp):
    _compile(sparsity=0.5, block_size=8, dtype="int4")


@case("arguments", "error", r"example|input")
def compile_inputs_none(tmp):
    import tetris_tvm
    tetris_tvm.compile(mlp(), None, sparsity=0.5, block_size=8, progress=False)


@case("arguments", "error", r"example|input")
def compile_inputs_string(tmp):
    import tetris_tvm
    tetris_tvm.compile(mlp(), "x", sparsity=0.5, block_size=8, progress=False)


@case("arguments", "error", r"export|shape|input")
def compile_inputs_wrong_shape(tmp):
    import tetris_tvm
    torch = _torch()
    tetris_tvm.compile(mlp(), (torch.randn(4, 25),), sparsity=0.5, block_size=8,
                       progress=False)


@case("arguments", "error", r"option|sparsty|argument")
def compile_unknown_option(tmp):
    _compile(sparsty=0.5)


@case("arguments", "error", r"streams")
def compile_streams_bogus(tmp):
    _compile(sparsity=0.5, block_size=8, streams="bogus")


@case("arguments", "error", r"tuning|no such|not found|exist")
def compile_tuning_dir_missing(tmp):
    _compile(sparsity=0.5, block_size=8, tuning=str(tmp / "nowhere"))


@case("arguments", "either", r"float64|double|dtype")
def compile_float64_model(tmp):
    _torch()
    model = mlp().double()
    compile_and_check(model, (x_mlp().double(),), sparsity=0.5, block_size=8)


@case("arguments", "either", r"float16|half|dtype")
def compile_float16_model(tmp):
    _torch()
    model = mlp().half()
    compile_and_check(model, (x_mlp().half(),), tol=2e-2, sparsity=0.5, block_size=8)


@case("arguments", "result")
def compile_keeps_training_mode(tmp):
    """compile must not switch the user's model to eval() behind their back."""
    model = mlp().train()
    import tetris_tvm
    tetris_tvm.compile(model, (x_mlp(),), sparsity=0.5, block_size=8, progress=False)
    if not model.training:
        raise Wrong("compile switched the user's model to eval mode")


@case("arguments", "error", r"plan")
def compile_plan_of_another_model(tmp):
    import tetris_tvm
    torch = _torch()
    other = torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 8)).eval()
    plan = tetris_tvm.prune(other, sparsity=0.5, block_size=8)
    _compile(plan=plan)


@case("arguments", "either", r"block_size|plan")
def compile_plan_with_other_block_size(tmp):
    """A plan and a different explicit block_size: not silently ignored."""
    import tetris_tvm
    plan = tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _compile(plan=plan, block_size=(16, 16))
    if not any("block" in str(x.message) for x in w):
        raise Wrong("block_size=(16, 16) with a plan of 8x8 blocks: ignored silently")


@case("arguments", "error", r"model|Module")
def compile_not_a_model(tmp):
    import tetris_tvm
    tetris_tvm.compile("model", (x_mlp(),), progress=False)


@case("arguments", "either", r"cuda|GPU|device")
def compile_cuda_without_gpu(tmp):
    """target="cuda" on a machine without a GPU: said at compile time, and a clear error at
    the first call."""
    torch = _torch()
    if torch.cuda.is_available():
        return
    import tetris_tvm
    model = torch.nn.Linear(32, 32).eval()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cm = tetris_tvm.compile(model, (torch.randn(4, 32),), target="cuda", sparsity=0.5,
                                block_size=16, progress=False)
    if not any("GPU" in str(x.message) or "cuda" in str(x.message).lower() for x in w):
        raise Wrong("compiled for cuda on a machine without a GPU: nothing said")
    cm(torch.randn(4, 32))


@case("arguments", "result")
def compile_model_without_parameters(tmp):
    torch = _torch()

    class Act(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2

    compile_and_check(Act().eval(), (torch.randn(3, 5),), sparsity=0.5, block_size=8)


@case("arguments", "result")
def compile_model_returning_dict(tmp):
    torch = _torch()

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(16, 16)

        def forward(self, x):
            return {"y": self.a(x), "z": x * 2}

    import tetris_tvm
    model = Two().eval()
    x = torch.randn(2, 16)
    cm = tetris_tvm.compile(model, (x,), sparsity=0.5, block_size=8, progress=False)
    out = cm(x)
    ref = masked_reference(model, cm.plan)(x)
    got = out["y"] if isinstance(out, dict) else out[0]
    close(got, ref["y"].detach())


@case("arguments", "result")
def compile_sparsity_zero_is_dense(tmp):
    model = mlp()
    torch = _torch()
    import tetris_tvm
    cm = tetris_tvm.compile(model, (x_mlp(),), sparsity=0.0, block_size=8, progress=False)
    with torch.no_grad():
        close(cm(x_mlp()), model(x_mlp()))


@case("arguments", "result")
def compile_odd_shapes(tmp):
    torch = _torch()
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(37, 53), torch.nn.GELU(),
                                torch.nn.Linear(53, 11)).eval()
    compile_and_check(model, (torch.randn(5, 37),), sparsity=0.9, block_size=(16, 8))


# ---------------------------------------------------------------------------------------------
# weights used elsewhere: the masked reference holds for every read of a weight


@case("weights", "result")
def weight_reused_transposed(tmp):
    torch = _torch()
    F = torch.nn.functional

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(32, 48, bias=False)

        def forward(self, x):
            return F.linear(torch.relu(self.a(x)), self.a.weight.t())

    torch.manual_seed(0)
    compile_and_check(Tied().eval(), (torch.randn(4, 32),), sparsity=0.5, block_size=8)


@case("weights", "result")
def weight_read_as_a_scale(tmp):
    torch = _torch()

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(32, 16)

        def forward(self, x):
            return self.fc(x) * self.fc.weight.abs().mean()

    torch.manual_seed(0)
    compile_and_check(Scaled().eval(), (torch.randn(4, 32),), sparsity=0.5, block_size=8)


class _TiedLM:
    @staticmethod
    def make():
        torch = _torch()

        class LM(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(64, 32)
                self.mid = torch.nn.Linear(32, 32)
                self.head = torch.nn.Linear(32, 64, bias=False)
                self.head.weight = self.emb.weight

            def forward(self, ids):
                return self.head(torch.tanh(self.mid(self.emb(ids))))

        torch.manual_seed(0)
        return LM().eval()


@case("weights", "result")
def tied_embedding_and_head_compile(tmp):
    torch = _torch()
    model = _TiedLM.make()
    ids = torch.randint(0, 64, (2, 6))
    compile_and_check(model, (ids,), sparsity=0.5, block_size=8)


@case("weights", "result")
def tied_embedding_and_head_plan_apply(tmp):
    import tetris_tvm
    model = _TiedLM.make()
    plan = tetris_tvm.prune(model, sparsity=0.5, block_size=8)
    plan.apply(model, keep=False)
    lp = plan["head.weight"]
    w = model.emb.weight.detach().numpy()
    if np.abs(w[~lp.mask]).max() != 0:
        raise Wrong("the tied embedding kept weights the head's mask prunes")
    if plan["emb.weight"] is not lp:
        raise Wrong("the tied parameter is not in the plan under its other name")


@case("weights", "result")
def module_called_twice(tmp):
    torch = _torch()

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(32, 32)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    torch.manual_seed(0)
    compile_and_check(Twice().eval(), (torch.randn(4, 32),), sparsity=0.5, block_size=8)


@case("weights", "result")
def one_parameter_in_two_layers(tmp):
    torch = _torch()

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(32, 32)
            self.b = torch.nn.Linear(32, 32)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    compile_and_check(Shared().eval(), (torch.randn(4, 32),), sparsity=0.5, block_size=8)


@case("weights", "result")
def shared_weight_prune_then_compile_plan(tmp):
    import tetris_tvm
    torch = _torch()

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(32, 32)
            self.b = torch.nn.Linear(32, 32)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = Shared().eval()
    plan = tetris_tvm.prune(model, sparsity=0.5, block_size=8)
    compile_and_check(model, (torch.randn(4, 32),), plan=plan)


@case("weights", "result")
def weight_reused_in_conv_model(tmp):
    torch = _torch()

    class ConvReuse(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = torch.relu(self.c(x))
            return y + self.c.weight.sum()

    torch.manual_seed(0)
    compile_and_check(ConvReuse().eval(), (torch.randn(2, 8, 6, 6),), sparsity=0.5,
                      block_size=4)


# ---------------------------------------------------------------------------------------------
# NaN and Inf propagate as in torch


def _nan_case(model, x, **kw):
    kw.setdefault("sparsity", 0.0)
    kw.setdefault("block_size", 8)
    compile_and_check(model.eval(), (x,), **kw)


@case("nan", "result")
def nan_through_relu_dense(tmp):
    _torch()
    x = x_mlp().clone()
    x[0, 3] = float("nan")
    _nan_case(mlp(), x)


@case("nan", "result")
def nan_through_relu_pruned(tmp):
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.ReLU()).eval()
    x = x_mlp().clone()
    x[0, :] = float("nan")  # a whole row: every kept block reads it
    _nan_case(model, x, sparsity=0.5)


@case("nan", "result")
def nan_through_conv_relu(tmp):
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU())
    x = torch.randn(2, 1, 12, 12)
    x[0, 0, 5, 5] = float("nan")
    _nan_case(model, x)


@case("nan", "result")
def nan_through_maxpool(tmp):
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.MaxPool2d(2))
    x = torch.randn(2, 1, 12, 12)
    x[1, 0, 4, 4] = float("nan")
    _nan_case(model, x)


@case("nan", "result")
def nan_through_relu6(tmp):
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.ReLU6())
    x = x_mlp().clone()
    x[2, 0] = float("nan")
    _nan_case(model, x)


@case("nan", "result")
def nan_through_gelu_layernorm(tmp):
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.GELU(),
                                torch.nn.LayerNorm(32))
    x = x_mlp().clone()
    x[1, 1] = float("nan")
    _nan_case(model, x)


@case("nan", "result")
def nan_through_softmax(tmp):
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Softmax(-1))
    x = x_mlp().clone()
    x[3, 5] = float("nan")
    _nan_case(model, x)


class _Reduce:
    @staticmethod
    def make(kind: str):
        torch = _torch()

        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(24, 32)

            def forward(self, x):
                y = self.fc(x)
                if kind == "amax":
                    return y.amax(dim=-1, keepdim=True) + y.amin(dim=0)
                if kind == "max":
                    return y - torch.max(y) + torch.min(y)
                if kind == "maximum":
                    return torch.maximum(y, y.flip(0)) - torch.minimum(y, torch.zeros(32))
                return torch.clamp(y, -0.5, 0.5)

        torch.manual_seed(0)
        return M()


@case("nan", "either", r"amax|support")
def nan_through_amax_amin(tmp):
    x = x_mlp().clone()
    x[1, 3] = float("nan")
    _nan_case(_Reduce.make("amax"), x)


@case("nan", "result")
def nan_through_max_min(tmp):
    x = x_mlp().clone()
    x[1, 3] = float("nan")
    _nan_case(_Reduce.make("max"), x)


@case("nan", "result")
def nan_through_maximum_minimum(tmp):
    x = x_mlp().clone()
    x[2, 3] = float("nan")
    _nan_case(_Reduce.make("maximum"), x)


@case("nan", "result")
def nan_through_clamp(tmp):
    x = x_mlp().clone()
    x[0, 7] = float("nan")
    _nan_case(_Reduce.make("clamp"), x)


@case("nan", "result")
def maxpool_ceil_mode_and_padding(tmp):
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3), torch.nn.MaxPool2d(3, 2, 1,
                                                                             ceil_mode=True))
    x = torch.randn(2, 2, 11, 11)
    x[0, 1, 5, 5] = float("nan")
    _nan_case(model, x)


@case("nan", "result")
def inf_through_relu(tmp):
    _torch()
    x = x_mlp().clone()
    x[0, 0] = float("inf")
    x[1, 1] = float("-inf")
    _nan_case(mlp(), x)


@case("nan", "result")
def nan_through_avgpool_flatten(tmp):
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4))
    x = torch.randn(2, 2, 8, 8)
    x[0, 1, 2, 2] = float("nan")
    _nan_case(model, x)


# ---------------------------------------------------------------------------------------------
# calling a model


@case("calls", "error", r"input")
def call_with_none(tmp):
    _, cm = compiled_mlp()
    cm(None)


@case("calls", "error", r"input")
def call_with_list(tmp):
    _, cm = compiled_mlp()
    cm([[0.0] * 24] * 4)


@case("calls", "error", r"input")
def call_with_no_inputs(tmp):
    _, cm = compiled_mlp()
    cm()


@case("calls", "result")
def call_with_requires_grad(tmp):
    model, cm = compiled_mlp()
    x = x_mlp().requires_grad_()
    close(cm(x), masked_reference(model, cm.plan)(x).detach())


@case("calls", "error", r"dtype")
def call_with_int_tensor(tmp):
    torch = _torch()
    _, cm = compiled_mlp()
    cm(torch.ones(4, 24, dtype=torch.int64))


@case("calls", "error", r"shape|batch")
def call_with_empty_batch(tmp):
    torch = _torch()
    _, cm = compiled_mlp()
    cm(torch.zeros(0, 24))


@case("calls", "result")
def call_with_numpy_float32(tmp):
    model, cm = compiled_mlp()
    x = x_mlp()
    close(cm(x.numpy()), masked_reference(model, cm.plan)(x).detach())


@case("calls", "result")
def call_result_survives_next_call(tmp):
    _, cm = compiled_mlp()
    a = cm(x_mlp())
    keep = a.clone()
    cm(x_mlp() * 3)
    close(a, keep)


def _hammer(fn, inputs, want, threads: int, calls: int) -> None:
    errors: list[str] = []
    wrong: list[str] = []

    def work(t: int) -> None:
        for i in range(calls):
            k = (t + i) % len(inputs)
            try:
                got = fn(inputs[k])
                got = got.detach().numpy() if hasattr(got, "detach") else np.asarray(got)
            except Exception as e:  # noqa: BLE001 - counted
                errors.append(f"{type(e).__name__}: {e}")
                continue
            if not np.allclose(got, want[k], rtol=1e-5, atol=1e-5):
                wrong.append(f"thread {t} call {i}")

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if wrong:
        raise Wrong(f"{len(wrong)} of {threads * calls} calls returned another input's output")
    if errors:
        raise Wrong(f"{len(errors)} of {threads * calls} calls failed: {errors[0][:200]}")


def _thread_inputs():
    torch = _torch()
    g = torch.Generator().manual_seed(5)
    return [torch.randn(4, 24, generator=g) for _ in range(8)]


@case("threads", "result", isolate=True)
def threads_compiled_model(tmp):
    model, cm = compiled_mlp()
    inputs = _thread_inputs()
    ref = masked_reference(model, cm.plan)
    want = [ref(x).detach().numpy() for x in inputs]
    _hammer(cm, inputs, want, threads=8, calls=200)


@case("threads", "result", isolate=True)
def threads_loaded_model(tmp):
    import tetris_tvm
    model, cm = compiled_mlp()
    m = tetris_tvm.load(exported_mlp_dir() / "m.so")
    inputs = _thread_inputs()
    ref = masked_reference(model, cm.plan)
    want = [ref(x).detach().numpy() for x in inputs]
    _hammer(lambda x: m(x.numpy()), inputs, want, threads=8, calls=200)


@case("threads", "result", isolate=True)
def threads_first_call_concurrent(tmp):
    """The very first calls of a fresh model come from several threads at once."""
    import tetris_tvm
    torch = _torch()
    model = mlp(seed=7)
    cm = tetris_tvm.compile(model, (x_mlp(),), sparsity=0.5, block_size=8, progress=False)
    inputs = _thread_inputs()
    ref = masked_reference(model, cm.plan)
    want = [ref(x).detach().numpy() for x in inputs]
    with torch.no_grad():
        _hammer(cm, inputs, want, threads=8, calls=5)


# ---------------------------------------------------------------------------------------------
# export and load


def _truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    shutil.copy(str(src) + ".tetris.json", str(dst) + ".tetris.json")
    return dst


def _load_truncated(tmp: Path, fraction: float) -> None:
    import tetris_tvm
    src = exported_mlp_dir() / "m.so"
    path = _truncate(src, tmp / f"cut{int(fraction * 100)}.so", fraction)
    tetris_tvm.load(path)


@case("files", "error", r"cut10\.so", isolate=True)
def load_truncated_10(tmp):
    _load_truncated(tmp, 0.10)


@case("files", "error", r"cut50\.so", isolate=True)
def load_truncated_50(tmp):
    _load_truncated(tmp, 0.50)


@case("files", "error", r"cut70\.so", isolate=True)
def load_truncated_70(tmp):
    _load_truncated(tmp, 0.70)


@case("files", "error", r"cut95\.so", isolate=True)
def load_truncated_95(tmp):
    _load_truncated(tmp, 0.95)


def _load_truncated_bare(tmp: Path, fraction: float) -> None:
    import tetris_tvm
    data = (exported_mlp_dir() / "m.so").read_bytes()
    path = tmp / f"bare{int(fraction * 100)}.so"
    path.write_bytes(data[: int(len(data) * fraction)])
    tetris_tvm.load(path)


@case("files", "error", r"bare10\.so", isolate=True)
def load_truncated_10_without_sidecar(tmp):
    _load_truncated_bare(tmp, 0.10)


@case("files", "error", r"bare50\.so", isolate=True)
def load_truncated_50_without_sidecar(tmp):
    _load_truncated_bare(tmp, 0.50)


@case("files", "error", r"bare70\.so", isolate=True)
def load_truncated_70_without_sidecar(tmp):
    _load_truncated_bare(tmp, 0.70)


@case("files", "error", r"bare99\.so", isolate=True)
def load_truncated_99_without_sidecar(tmp):
    _load_truncated_bare(tmp, 0.99)


@case("files", "error", r"arm\.so.*aarch64", isolate=True)
def load_library_of_another_architecture(tmp):
    import tetris_tvm
    data = bytearray((exported_mlp_dir() / "m.so").read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine: aarch64
    (tmp / "arm.so").write_bytes(bytes(data))
    tetris_tvm.load(tmp / "arm.so")


@case("files", "error", r"junk\.so", isolate=True)
def load_random_bytes(tmp):
    import tetris_tvm
    p = tmp / "junk.so"
    p.write_bytes(np.random.default_rng(0).bytes(20000))
    tetris_tvm.load(p)


@case("files", "error", r"empty\.so", isolate=True)
def load_empty_file(tmp):
    import tetris_tvm
    p = tmp / "empty.so"
    p.write_bytes(b"")
    tetris_tvm.load(p)


@case("files", "error", r"nothere\.so")
def load_missing(tmp):
    import tetris_tvm
    tetris_tvm.load(tmp / "nothere.so")


@case("files", "error", r"adir")
def load_directory(tmp):
    import tetris_tvm
    (tmp / "adir").mkdir()
    tetris_tvm.load(tmp / "adir")


@case("files", "either", r"tetris\.json|metadata")
def load_without_sidecar(tmp):
    import tetris_tvm
    src = exported_mlp_dir() / "m.so"
    shutil.copy(src, tmp / "bare.so")
    m = tetris_tvm.load(tmp / "bare.so")
    model, cm = compiled_mlp()
    close(m(x_mlp().numpy()), masked_reference(model, cm.plan)(x_mlp()).detach())


@case("files", "error", r"swapped\.so|match|another")
def load_with_swapped_sidecar(tmp):
    """The sidecar of another model beside the library: detected before running."""
    import tetris_tvm
    torch = _torch()
    other = torch.nn.Linear(10, 3).eval()
    cm2 = tetris_tvm.compile(other, (torch.randn(2, 10),), sparsity=0.0, block_size=8,
                             progress=False)
    cm2.export(tmp / "other.so")
    shutil.copy(exported_mlp_dir() / "m.so", tmp / "swapped.so")
    shutil.copy(tmp / "other.so.tetris.json", tmp / "swapped.so.tetris.json")
    m = tetris_tvm.load(tmp / "swapped.so")
    m(np.zeros((2, 10), np.float32))


@case("files", "error", r"edited\.so|match|shape")
def load_with_edited_sidecar(tmp):
    import tetris_tvm
    shutil.copy(exported_mlp_dir() / "m.so", tmp / "edited.so")
    meta = json.loads((exported_mlp_dir() / "m.so.tetris.json").read_text())
    meta["inputs"][0]["shape"] = [4, 30]
    (tmp / "edited.so.tetris.json").write_text(json.dumps(meta))
    m = tetris_tvm.load(tmp / "edited.so")
    m(np.zeros((4, 30), np.float32))


@case("files", "error", r"bad\.so\.tetris\.json")
def load_with_broken_sidecar_json(tmp):
    import tetris_tvm
    shutil.copy(exported_mlp_dir() / "m.so", tmp / "bad.so")
    (tmp / "bad.so.tetris.json").write_text("{not json")
    tetris_tvm.load(tmp / "bad.so")


@case("files", "result")
def reexport_then_reload_same_path(tmp):
    import tetris_tvm
    torch = _torch()
    a = torch.nn.Linear(16, 4).eval()
    b = torch.nn.Linear(16, 4).eval()
    with torch.no_grad():
        b.weight.mul_(-3)
    x = torch.randn(2, 16)
    ca = tetris_tvm.compile(a, (x,), sparsity=0.0, block_size=8, progress=False)
    cb = tetris_tvm.compile(b, (x,), sparsity=0.0, block_size=8, progress=False)
    p = tmp / "same.so"
    ca.export(p)
    ya = tetris_tvm.load(p)(x.numpy())
    cb.export(p)
    yb = tetris_tvm.load(p)(x.numpy())
    close(ya, a(x).detach(), what="first load")
    close(yb, b(x).detach(), what="reload after re-export")


@case("files", "result")
def load_two_copies_at_once(tmp):
    import tetris_tvm
    src = exported_mlp_dir() / "m.so"
    m1 = tetris_tvm.load(src)
    m2 = tetris_tvm.load(src)
    close(m1(x_mlp().numpy()), m2(x_mlp().numpy()))


@case("files", "error", r"bogus|device")
def load_bogus_device(tmp):
    import tetris_tvm
    tetris_tvm.load(exported_mlp_dir() / "m.so", device="bogus")


@case("files", "error", r"cuda|GPU|device")
def load_on_cuda_without_gpu(tmp):
    torch = _torch()
    import tetris_tvm
    if torch.cuda.is_available():
        raise ValueError("skipped: a GPU is present (device cuda exists)")
    m = tetris_tvm.load(exported_mlp_dir() / "m.so", device="cuda")
    m(x_mlp().numpy())


@case("files", "error", r"ro[/\\]m\.so|permission|writ")
def export_to_read_only_dir(tmp):
    if os.geteuid() == 0:
        # root writes anywhere: a path below a regular file fails the same way for everyone
        (tmp / "ro").write_text("a file, not a folder")
    else:
        (tmp / "ro").mkdir()
        os.chmod(tmp / "ro", 0o500)
    _, cm = compiled_mlp()
    cm.export(tmp / "ro" / "m.so")


@case("files", "error", r"isdir|directory|folder")
def export_to_existing_directory(tmp):
    (tmp / "isdir").mkdir()
    _, cm = compiled_mlp()
    cm.export(tmp / "isdir")


@case("files", "result")
def export_creates_parent_dirs(tmp):
    import tetris_tvm
    _, cm = compiled_mlp()
    p = cm.export(tmp / "a" / "b" / "m.so")
    close(tetris_tvm.load(p)(x_mlp().numpy()), cm(x_mlp()))


@case("files", "error", r"no-such-gcc|compiler")
def export_with_missing_cross_compiler(tmp):
    _, cm = compiled_mlp()
    cm.export(tmp / "x.so", cross_compiler="no-such-gcc")


# ---------------------------------------------------------------------------------------------
# plan files


def _plan():
    import tetris_tvm
    return tetris_tvm.prune(mlp(), sparsity=0.5, block_size=8)


def _edit_plan(tmp: Path, edit: Callable[[dict], None], name: str = "edited.npz") -> Path:
    src = tmp / "src.npz"
    _plan().save(src)
    data = dict(np.load(src, allow_pickle=False))
    edit(data)
    out = tmp / name
    with open(out, "wb") as f:
        np.savez(f, **data)
    return out


def _load_plan(path):
    import tetris_tvm
    return tetris_tvm.PruningPlan.load(path)


@case("plans", "error", r"nothere\.npz")
def plan_load_missing(tmp):
    _load_plan(tmp / "nothere.npz")


@case("plans", "error", r"junk\.npz")
def plan_load_junk(tmp):
    (tmp / "junk.npz").write_bytes(b"this is not a zip file at all")
    _load_plan(tmp / "junk.npz")


@case("plans", "error", r"cut\.npz")
def plan_load_truncated(tmp):
    _plan().save(tmp / "full.npz")
    data = (tmp / "full.npz").read_bytes()
    (tmp / "cut.npz").write_bytes(data[: len(data) // 2])
    _load_plan(tmp / "cut.npz")


@case("plans", "error", r"edited\.npz.*(perm|permutation)")
def plan_perm_all_zeros(tmp):
    def edit(d):
        d["l0/perm0"] = np.zeros_like(d["l0/perm0"])
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz.*(perm|permutation)")
def plan_perm_negative(tmp):
    def edit(d):
        d["l0/perm1"] = -1 - d["l0/perm1"]
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz.*(perm|permutation)")
def plan_perm_short(tmp):
    def edit(d):
        d["l1/perm0"] = d["l1/perm0"][:-1]
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz")
def plan_perm_missing(tmp):
    def edit(d):
        del d["l0/perm0"]
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz.*mask")
def plan_mask_short(tmp):
    def edit(d):
        d["l0/mask"] = d["l0/mask"][:3]
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz.*(block|mask)")
def plan_mask_not_block_structured(tmp):
    def edit(d):
        shape = tuple(d["l0/shape"])
        mask = np.unpackbits(d["l0/mask"], count=int(np.prod(shape))).reshape(shape)
        mask[0, 0] ^= 1  # one element of one block flipped
        d["l0/mask"] = np.packbits(mask.ravel())
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz.*(block)")
def plan_block_size_zero(tmp):
    def edit(d):
        d["l0/block_size"] = np.zeros_like(d["l0/block_size"])
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz")
def plan_meta_garbage(tmp):
    def edit(d):
        d["meta"] = np.frombuffer(b"{nope", dtype=np.uint8)
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz.*format")
def plan_other_format(tmp):
    def edit(d):
        meta = json.loads(bytes(d["meta"]).decode())
        meta["format"] = "tetris-tvm-plan/99"
        d["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "error", r"edited\.npz")
def plan_params_missing_array(tmp):
    def edit(d):
        meta = json.loads(bytes(d["meta"]).decode())
        meta["params"] = ["0.weight"]
        d["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    _load_plan(_edit_plan(tmp, edit))


@case("plans", "result")
def plan_roundtrip_compiles_identically(tmp):
    import tetris_tvm
    model, cm = compiled_mlp()
    cm.plan.save(tmp / "p.npz")
    plan = tetris_tvm.PruningPlan.load(tmp / "p.npz")
    cm2 = tetris_tvm.compile(model, (x_mlp(),), plan=plan, progress=False)
    close(cm2(x_mlp()), cm(x_mlp()))


@case("plans", "error", r"shape|plan")
def plan_apply_to_other_shape(tmp):
    torch = _torch()
    other = torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 8))
    _plan().apply(other)


@case("plans", "error", r"ro[/\\]p\.npz|directory|writ")
def plan_save_to_bad_path(tmp):
    (tmp / "ro").write_text("a file")
    _plan().save(tmp / "ro" / "p.npz")


@case("plans", "error", r"plan|layer|KeyError|no plan")
def plan_missing_layer_lookup(tmp):
    plan = _plan()
    try:
        plan["nothere.weight"]
    except KeyError as e:
        raise ValueError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# the CLI


@case("cli", "error", r"block")
def cli_block_negative(tmp):
    run_cli(["prune", "--model", "reliability_probe:mlp", "--block", "-8", "--quiet"])


@case("cli", "error", r"block")
def cli_block_text(tmp):
    run_cli(["prune", "--model", "reliability_probe:mlp", "--block", "abc"])


@case("cli", "error", r"sparsity")
def cli_sparsity_out_of_range(tmp):
    run_cli(["prune", "--model", "reliability_probe:mlp", "--sparsity", "1.5"])


@case("cli", "error", r"target")
def cli_target_bogus(tmp):
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,24",
             "--target", "bogus", "--block", "8"])


@case("cli", "error", r"target|JSON")
def cli_target_bad_json(tmp):
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,24",
             "--target", "{kind: llvm"])


@case("cli", "error", r"missing\.npz")
def cli_plan_missing(tmp):
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,24",
             "--plan", str(tmp / "missing.npz")])


@case("cli", "error", r"cut\.npz")
def cli_plan_truncated(tmp):
    _plan().save(tmp / "full.npz")
    data = (tmp / "full.npz").read_bytes()
    (tmp / "cut.npz").write_bytes(data[: len(data) // 3])
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,24",
             "--plan", str(tmp / "cut.npz")])


@case("cli", "error", r"input|shape")
def cli_wrong_input_shape(tmp):
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,25",
             "--block", "8"])


@case("cli", "error", r"shape")
def cli_input_shape_text(tmp):
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,x"])


@case("cli", "error", r"nosuchmodule")
def cli_model_module_missing(tmp):
    run_cli(["prune", "--model", "nosuchmodule:make"])


@case("cli", "error", r"bogus")
def cli_model_bogus(tmp):
    run_cli(["prune", "--model", "bogus"])


@case("cli", "error", r"factory|nofactory")
def cli_model_factory_missing(tmp):
    run_cli(["prune", "--model", "reliability_probe:nofactory"])


@case("cli", "error", r"nothere")
def cli_report_missing(tmp):
    run_cli(["report", str(tmp / "nothere.so")])


@case("cli", "error", r"junk\.npz")
def cli_report_junk_plan(tmp):
    (tmp / "junk.npz").write_bytes(b"nope")
    run_cli(["report", str(tmp / "junk.npz")])


@case("cli", "error", r"calibration|cal\.pt")
def cli_calibration_file_junk(tmp):
    (tmp / "cal.pt").write_bytes(b"nope")
    run_cli(["prune", "--model", "reliability_probe:mlp", "--calibration",
             str(tmp / "cal.pt"), "--block", "8", "--quiet"])


@case("cli", "error", r"dynamic")
def cli_dynamic_batch_zero(tmp):
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,24",
             "--dynamic-batch", "0", "--block", "8"])


@case("cli", "error", r"plan|sparsity")
def cli_plan_and_sparsity_disagree(tmp):
    """--plan with an explicit --sparsity that is not the plan's: not silently ignored."""
    _plan().save(tmp / "p.npz")
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,24",
             "--plan", str(tmp / "p.npz"), "--sparsity", "0.9"])


@case("cli", "error", r"resume|checkpoint")
def cli_resume_without_checkpoint_dir(tmp):
    run_cli(["finetune", "--model", "mnist-cnn", "--resume", "--steps", "2"])


@case("cli", "result")
def cli_version(tmp):
    out = run_cli(["--version"])
    import tetris_tvm
    if tetris_tvm.__version__ not in out:
        raise Wrong(f"--version printed {out!r}")


@case("cli", "result")
def cli_help_shows_defaults(tmp):
    out = run_cli(["compile", "--help"])
    if "0.75" not in out:
        raise Wrong("compile --help does not show the default sparsity")


@case("cli", "error", r"export|out|directory|writ")
def cli_export_to_bad_path(tmp):
    (tmp / "f").write_text("a file")
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,24",
             "--block", "8", "--out", str(tmp / "f" / "m.so")])


@case("cli", "result")
def cli_compile_works(tmp):
    run_cli(["compile", "--model", "reliability_probe:mlp", "--input-shape", "4,24",
             "--block", "8", "--sparsity", "0.5", "--out", str(tmp / "ok.so")])
    if not (tmp / "ok.so").exists():
        raise Wrong("no library written")


# ---------------------------------------------------------------------------------------------
# fine-tuning


def _ft(tmp, **kw):
    import tetris_tvm
    torch = _torch()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 24, generator=g),) for _ in range(4)]
    kw.setdefault("steps", 4)
    kw.setdefault("progress", False)
    kw.setdefault("prune_every", 2)
    return tetris_tvm.finetune(mlp(), data, 0.5, 8, **kw)


@case("finetune", "error", r"steps")
def finetune_zero_steps(tmp):
    _ft(tmp, steps=0)


@case("finetune", "error", r"lr|learning")
def finetune_negative_lr(tmp):
    _ft(tmp, lr=-1.0)


@case("finetune", "error", r"data|batch")
def finetune_empty_data(tmp):
    import tetris_tvm
    tetris_tvm.finetune(mlp(), [], 0.5, 8, steps=2, progress=False)


@case("finetune", "error", r"sparsity")
def finetune_sparsity_one(tmp):
    import tetris_tvm
    torch = _torch()
    tetris_tvm.finetune(mlp(), [(torch.randn(8, 24),)], 1.0, 8, steps=2, progress=False)


@case("finetune", "error", r"resume|checkpoint|sparsity")
def finetune_resume_with_other_settings(tmp):
    _ft(tmp, checkpoint_dir=tmp / "ck", checkpoint_every=2)
    import tetris_tvm
    torch = _torch()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 24, generator=g),) for _ in range(4)]
    tetris_tvm.finetune(mlp(), data, 0.75, 8, steps=4, progress=False, prune_every=2,
                        checkpoint_dir=tmp / "ck", resume=True)


@case("finetune", "error", r"resume|checkpoint")
def finetune_resume_without_dir(tmp):
    _ft(tmp, resume=True)


@case("finetune", "error", r"cannot write the checkpoint")
def finetune_checkpoint_on_a_full_disk(tmp):
    """A checkpoint that cannot be written (a full disk) is an error in our words, and no
    half-written file is left behind."""
    torch = _torch()
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64")

    torch.save = full_disk
    try:
        _ft(tmp, checkpoint_dir=tmp / "ck", checkpoint_every=2)
    finally:
        torch.save = real
        if list((tmp / "ck").glob("*.tmp")):
            raise Wrong("a half-written checkpoint was left behind")


@case("finetune", "result")
def finetune_result_compiles_to_reference(tmp):
    model, plan = _ft(tmp)
    compile_and_check(model, (x_mlp(),), plan=plan)


# ---------------------------------------------------------------------------------------------


def run(only: str | None = None, names: list[str] | None = None,
        in_process: bool = False) -> list[Verdict]:
    out = []
    for c in CASES:
        if (only and c.area != only) or (names and c.name not in names):
            continue
        if in_process:  # the caller runs this process apart: a crash is seen as its exit
            print(f"running {c.name}", file=sys.stderr, flush=True)
            c = Case(c.name, c.area, c.run, c.expect, c.match, isolate=False)
        with tempfile.TemporaryDirectory(prefix="probe-") as d:
            out.append(judge(c, Path(d)))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", help="one area: " + ", ".join(sorted({c.area for c in CASES})))
    p.add_argument("--case", action="append", help="one case by name (repeatable)")
    p.add_argument("--json", help="write the verdicts to this JSON file")
    p.add_argument("--in-process", action="store_true",
                   help="run the cases that may crash in this process too (one process start)")
    args = p.parse_args(argv)
    verdicts = run(args.only, args.case, args.in_process)
    width = max(len(v.case) for v in verdicts)
    for v in verdicts:
        print(f"{v.verdict:<5} {v.area:<10} {v.case:<{width}}  {v.detail[:150]}")
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("good", "poor", "bad")}
    print(f"\n{len(verdicts)} cases: {counts['good']} good, {counts['poor']} poor, "
          f"{counts['bad']} bad")
    if args.json:
        Path(args.json).write_text(json.dumps([vars(v) for v in verdicts], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
