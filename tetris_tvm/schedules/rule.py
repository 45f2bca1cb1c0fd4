"""The base of every tetris kernel rule: one default schedule, and its own tuning space.

A :class:`KernelRule` is a dlight ``ScheduleRule`` for the tetris kernels of some kinds
(``tetris.kernel`` attribute) on one kind of target. A subclass says how to schedule a kernel
for one configuration (``schedule``) and which configurations tuning may try (``configs``, the
rule table's choice first); the base class turns that into dlight's ``apply``:

- ``apply(func, target, tunable=False)`` -- the default schedule, or None when the rule does
  not match;
- ``apply(func, target, tunable=True)`` -- the tuning design spaces: one traced copy per
  configuration that the kernel's shape can take (:meth:`KernelRule.design_spaces`).

MetaSchedule's generic rules cannot schedule loops bounded by ``indptr``, and its mutators
replay a trace with new decisions, which breaks when a decision changes the loop structure; so
the space is a list of design spaces, one per structural choice, each with at most a few
structure-neutral sampled decisions (:meth:`KernelRule.finish_space`). Tuning asks the rules
for their spaces (:func:`tetris_tvm.schedules.pipeline.tuning_space`), not the target kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .analysis import fresh_schedule, kernel_kind

__all__ = ["KernelRule", "design_spaces_of", "matching_rule"]


class KernelRule(ScheduleRule):
    """A dlight rule for tetris kernels of :attr:`kinds` on targets of :attr:`target_kind`."""

    kinds: tuple[str, ...] = ()
    target_kind: str = "llvm"
    config_errors: tuple[type[BaseException], ...] = (s_tir.ScheduleError,)
    """What ``schedule`` raises for a configuration the kernel's shape cannot take."""
    scheduler: ClassVar[Callable[..., Any] | None] = None
    """``scheduler(sch, target, config)``: what :meth:`schedule` calls by default."""
    config_space: ClassVar[Callable[..., Sequence[Any]] | None] = None
    """``config_space(func, target)``: what :meth:`configs` returns by default."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == self.target_kind

    def matches(self, func: Any, target: Target) -> bool:
        """True when ``func`` is one of this rule's kernels and ``target`` its kind."""
        return (isinstance(func, tirx.PrimFunc) and self.is_target_available(target)
                and kernel_kind(func) in self.kinds)

    def schedule(self, sch: s_tir.Schedule, target: Target, config: Any = None) -> Any:
        """Schedule ``sch`` in place for ``config`` (None: the rule table's choice); what it
        returns is handed to :meth:`finish_space`."""
        if type(self).scheduler is None:
            raise NotImplementedError(f"{type(self).__name__} defines no scheduler")
        return type(self).scheduler(sch, target, config)

    def configs(self, func: tirx.PrimFunc, target: Target) -> Sequence[Any]:
        """The configurations tuning tries, the rule table's first (default: only that)."""
        space = type(self).config_space
        return [None] if space is None else space(func, target)

    def finish_space(self, space: s_tir.Schedule, target: Target, scheduled: Any) -> None:
        """Add sampled, structure-neutral decisions to one design space (default: none)."""
        return None

    def design_spaces(self, sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule]:
        """One scheduled copy of ``sch`` per configuration the kernel's shape can take."""
        out = []
        for config in self.configs(sch.mod["main"], target):
            space = sch.copy()
            try:
                scheduled = self.schedule(space, target, config)
            except self.config_errors:
                continue
            self.finish_space(space, target, scheduled)
            out.append(space)
        return out

    def apply(
        self, func: tirx.PrimFunc, target: Target, tunable: bool
    ) -> s_tir.Schedule | list[s_tir.Schedule] | None:
        """The default schedule of ``func`` (``tunable=True``: its design spaces), or None
        when ``func`` is none of :attr:`kinds` or ``target`` another kind."""
        if not self.matches(func, target):
            return None
        if tunable:
            return self.design_spaces(s_tir.Schedule(func), target)
        sch = fresh_schedule(func)
        self.schedule(sch, target)
        return sch


def matching_rule(rules: Sequence[Any], func: Any, target: Target) -> KernelRule | None:
    """The first tetris kernel rule of ``rules`` that takes ``func`` on ``target``, or None."""
    for rule in rules:
        if isinstance(rule, KernelRule) and rule.matches(func, target):
            return rule
    return None


def design_spaces_of(rules: Sequence[Any], sch: s_tir.Schedule,
                     target: Target) -> list[s_tir.Schedule] | None:
    """The design spaces of the rule of ``rules`` that takes ``sch``'s kernel, or None."""
    rule = matching_rule(rules, sch.mod["main"], target)
    return None if rule is None else rule.design_spaces(sch, target)
