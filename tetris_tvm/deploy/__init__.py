"""Deploying a compiled model to a device: a runtime-only bundle (:func:`export_bundle`)."""

from .bundle import export_bundle, runtime_libraries, target_arch

__all__ = ["export_bundle", "runtime_libraries", "target_arch"]
