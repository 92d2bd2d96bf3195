"""Lazy attribute loading for packages whose submodules pull in heavy libraries."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``table[name]`` on first use.

    A name equal to the last part of its module path returns the module itself; any other name is
    looked up as an attribute of that module.
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            mod = importlib.import_module(table[name])
            return mod if mod.__name__.endswith("." + name) else getattr(mod, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
