"""Plumbing shared by the name registries (datasets, preprocessing ops, objectives, evaluators)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable


def import_optional(modules: Iterable[str]) -> None:
    """Imports each module for the names it registers; a module that does not exist is skipped, while an import
    error raised inside one that does (e.g. its own missing dependency) propagates."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def unknown_name(kind: str, name: str, names: Iterable[str]) -> ValueError:
    """A ValueError for an unregistered `name`, with close matches and the registered names."""
    names = list(names)
    close = difflib.get_close_matches(name, names, n=3)
    return ValueError(f'Unknown {kind} {name!r}' + (f' (did you mean {", ".join(close)}?)' if close else '')
                      + f'; registered: {", ".join(sorted(names))}.')
