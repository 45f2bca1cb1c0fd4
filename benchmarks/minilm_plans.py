"""One-shot MiniLM plans shared by the benchmarks (int8.py, frontier.py, short_calibration.py):
the plan ``compile`` makes with the default recipe of ``calibration=`` (256 calibration
sentences, and optionally single vocabulary words), cached in benchmarks/cache/ so each is
computed once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import tetris_tvm
from tetris_tvm import quality, zoo

CACHE = Path(__file__).parent / "cache"
SKIP = {"pooler.*": {"skip": True}}  # the pooler output is not the sentence embedding


def one_shot_plan(model: Any, tok: Any, sparsity: float,
                  block: tuple[int, int] = (32, 32), words: int = 0) -> Any:
    """The plan for ``sparsity`` and ``block``, calibrated on 256 sentences and ``words``
    single words (``quality.minilm_calibration``; its ``settings["seconds"]``: how long the
    planning took when it was computed)."""
    CACHE.mkdir(exist_ok=True)
    shape = "" if tuple(block) == (32, 32) else f"_{block[0]}x{block[1]}"
    extra = f"_words{words}" if words else ""
    path = CACHE / f"minilm_oneshot_default_{int(sparsity * 100)}{shape}{extra}.npz"
    if path.exists():
        return tetris_tvm.PruningPlan.load(path)
    start = time.perf_counter()
    plan = tetris_tvm.plan_model(model, (zoo.minilm_inputs(tok, 8, 128),), sparsity,
                                 tuple(block), overrides=SKIP, progress=False,
                                 calibration=quality.minilm_calibration(tok, n=256, words=words))
    plan.settings["seconds"] = time.perf_counter() - start
    plan.save(path)
    return plan
