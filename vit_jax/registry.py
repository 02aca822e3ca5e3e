"""One registry class for every name -> object table of the project (models, evaluators, objectives, datasets,
preprocessing ops, official checkpoint layouts ...).

    EVALUATORS = registry.Registry('evaluator type', modules=('vit_jax.evaluators.classification', ...))

    @EVALUATORS.register('classification')       # registers the decorated object itself
    class Classification(Evaluator): ...

    EVALUATORS.add('ViT-B/16', entry, aliases=('ViT-B_16',))   # registers any value under a name
    EVALUATORS.get('classification')             # -> the class; a ValueError with close matches otherwise
    EVALUATORS.names()                           # registered names, in registration order

`modules` are imported the first time a name is missing or the names are listed (each registers its own names,
so importing the package stays cheap); a module that does not exist is skipped. A name is registered once.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar('T')


def import_optional(modules: Iterable[str]) -> None:
    """Imports each module for the names it registers; a module that does not exist is skipped, while an import
    error raised inside one that does (e.g. its own missing dependency) propagates."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def unknown_name(kind: str, name: str, names: Iterable[str], *, plural: str | None = None,
                 candidates: Iterable[str] = ()) -> ValueError:
    """A ValueError for an unregistered `name`: `Unknown <kind> 'x'. Did you mean: a, b? Registered <plural>: ...`.

    Close matches are searched among `names` and `candidates` (e.g. aliases, which are not listed).
    """
    names = list(names)
    close = difflib.get_close_matches(name, names + [c for c in candidates if c not in names], n=5, cutoff=0.5)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    return ValueError(f'Unknown {kind} {name!r}.{hint} Registered {plural or kind + "s"}: {", ".join(sorted(names))}.')


class Registry(Generic[T]):
    """Names (and aliases) -> registered values, with lazy imports of the modules that register them.

    Args:
        kind: what a name names, in messages ('model', 'preprocessing op', 'evaluator type').
        plural: its plural in messages (default: kind + 's').
        modules: modules imported (once, by `import_optional`) before a missing name is reported or the names are
            listed.
    """

    def __init__(self, kind: str, *, plural: str | None = None, modules: Iterable[str] = ()):
        self.kind = kind
        self.plural = plural or kind + 's'
        self.modules = tuple(modules)
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = not self.modules

    # Registration.
    def add(self, name: str, value: T, *, aliases: Iterable[str] = ()) -> T:
        """Registers `value` under `name` (and `aliases`); a name registered twice is a ValueError."""
        for n in (name, *aliases):
            if n in self._entries or n in self._aliases:
                raise ValueError(f'{self.kind[:1].upper()}{self.kind[1:]} {n!r} is registered twice.')
        self._entries[name] = value
        for a in aliases:
            self._aliases[a] = name
        return value

    def register(self, name: str, *, aliases: Iterable[str] = (),
                 entry: Callable[[Any], T] | None = None) -> Callable[[Any], Any]:
        """Decorator: registers the decorated class or function under `name`: itself, or `entry(obj)` when given
        (a record of the function and its options); the decorated object is returned unchanged."""

        def wrap(obj: Any) -> Any:
            self.add(name, obj if entry is None else entry(obj), aliases=aliases)
            return obj

        return wrap

    # Lookup.
    def load(self) -> None:
        """Imports the registering modules (once)."""
        if not self._loaded:
            self._loaded = True  # First: a module importing this registry while it loads does not recurse.
            import_optional(self.modules)

    def resolve(self, name: str) -> str:
        """The registered name of `name` or of the alias `name`; a ValueError with close matches otherwise."""
        if name not in self._entries and name not in self._aliases:
            self.load()
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries, plural=self.plural, candidates=self._aliases)
        return name

    def get(self, name: str) -> T:
        """The value registered as `name` (or one of its aliases)."""
        return self._entries[self.resolve(name)]

    def names(self) -> list[str]:
        """Every registered name (not the aliases), in registration order."""
        self.load()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, value) of every registered name, in registration order."""
        self.load()
        return list(self._entries.items())

    def aliases(self) -> dict[str, str]:
        """{alias: registered name}."""
        self.load()
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries and name not in self._aliases:
            self.load()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f'Registry({self.kind!r}, {len(self._entries)} registered)'

