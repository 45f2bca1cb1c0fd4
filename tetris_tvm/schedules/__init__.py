"""Schedules for the tetris kernels (:mod:`tetris_tvm.kernels`) and the dense ops, per target.

- :mod:`.pipeline` -- the one entry point: default rules per target, ``schedule_module``, the
  Relax schedule pipeline, and the tuning spaces the rules offer;
- :mod:`.rule` -- :class:`~.rule.KernelRule`, the base of every tetris kernel rule;
- :mod:`.cpu` / :mod:`.cuda` -- dlight-style rules per target;
- :mod:`.targets` -- what ``"llvm"`` and ``"cuda"`` mean;
- :mod:`.database` -- tuning records on disk, applied at compile time;
- :mod:`.build` -- compile one kernel for a weight and call it on numpy arrays (tests,
  benchmarks, and users who want a single kernel).
"""
