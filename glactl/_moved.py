"""Old module paths keep importing: `glactl.sampling`, `glactl.checkpoint`, ... are aliases of the modules that hold
their code now (docs/design.md §1), so scripts written against the flat layout still run."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

# Each old flat module, and each old module that is now a package, with the modules that hold its names now.
MOVED: dict[str, tuple[str, ...]] = {
    "glactl.api": ("glactl.api.model", "glactl.api.loading", "glactl.api.prompts", "glactl.api.describe"),
    "glactl.checkpoint": ("glactl.storage.checkpoint", "glactl.storage.safe_read", "glactl.storage.atomic"),
    "glactl.cli": (
        "glactl.cli.app",
        "glactl.cli.options",
        "glactl.cli.common",
        "glactl.cli.train",
        "glactl.cli.generate",
        "glactl.cli.complete",
        "glactl.cli.perplexity",
        "glactl.cli.info",
        "glactl.cli.compare",
    ),
    "glactl.compare": (
        "glactl.compare.options",
        "glactl.compare.runner",
        "glactl.compare.measure",
        "glactl.compare.summary",
        "glactl.compare.report",
    ),
    "glactl.data": (
        "glactl.data.sources",
        "glactl.data.local",
        "glactl.data.hub",
        "glactl.data.windows",
        "glactl.data.training_data",
        "glactl.runtime.cache",
    ),
    "glactl.devices": ("glactl.runtime.devices", "glactl.runtime.threads"),
    "glactl.display": ("glactl.report.display",),
    "glactl.distributed": ("glactl.runtime.distributed",),
    "glactl.evaluation": ("glactl.inference.scoring",),
    "glactl.inference": ("glactl.inference.precision", "glactl.inference.compiled_step"),
    "glactl.paths": ("glactl.storage.model_paths",),
    "glactl.plots": ("glactl.report.plots",),
    "glactl.process_memory": ("glactl.runtime.process_memory",),
    "glactl.reading": ("glactl.inference.reading",),
    "glactl.sampling": (
        "glactl.inference.sampling",
        "glactl.inference.stops",
        "glactl.inference.generation",
        "glactl.inference.completion",
        "glactl.runtime.threads",
    ),
    "glactl.saved_state": ("glactl.storage.state_file", "glactl.storage.state_format"),
    "glactl.tasks": ("glactl.data.tasks", "glactl.data.task_scoring"),
    "glactl.train_state": ("glactl.storage.trainer_state",),
    "glactl.training": (
        "glactl.training.options",
        "glactl.training.schedule",
        "glactl.training.run_folder",
        "glactl.training.setup",
        "glactl.training.run_log",
        "glactl.training.state",
        "glactl.training.checkpoints",
        "glactl.training.trainer",
        "glactl.report.progress",
    ),
}


def moved_attribute(old_module: str, name: str) -> Any:
    """`name` as the old module had it, taken from the first new module that defines it."""
    for target in MOVED[old_module]:
        module = importlib.import_module(target)
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(
        f"module {old_module!r} has no attribute {name!r} (its code lives in {', '.join(MOVED[old_module])})"
    )


def package_attribute(package: str, name: str) -> Any:
    """A package's `__getattr__`: the names of the module it replaced; its own submodules load as usual."""
    if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is not None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return moved_attribute(package, name)


class _Alias(types.ModuleType):
    """An old flat module: every attribute is looked up in the modules that hold it now."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return moved_attribute(self.__name__, name)


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of the old flat modules (those that did not become packages) with an alias."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED and fullname.count(".") == 1 and fullname.split(".")[1] not in _PACKAGES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _Alias(spec.name, f"Alias of {', '.join(MOVED[spec.name])} (docs/design.md §1).")

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the alias resolves names on first use."""


_PACKAGES = {"api", "cli", "compare", "data", "inference", "training"}


def install() -> None:
    """Put the alias finder on the import path once (called by `import glactl`)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
