"""One catalogue of components: every scheme, middlebox, proxy and server has one name, here.

A component is registered once, by the module that defines it, and every layer (the scenario
schema, the truth table, the simulator, the testbed and the benchmarks) looks it up by that name:
nothing switches on strings of its own (docs/design.md, "Components by name").

A :class:`Registry` is an ordered mapping from a name to an entry. What an entry is belongs to the
kind of component (a scheme object, a middlebox factory, ...): this module only keeps the names
straight, refuses duplicates, and turns an unknown name into one clear error with a suggestion.
Congestion controls live in the simulator (mpsim/sim/congestion.py) with a registry of this class,
since the proto layer knows nothing of them.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from mpsim.errors import MpsimError

T = TypeVar("T")


class UnknownComponentError(MpsimError, KeyError):
    """A name that no component of ``kind`` is registered under."""

    def __init__(self, kind: str, name: object, known: tuple[str, ...]) -> None:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        message = f"unknown {kind} {name!r}{hint}; known: {', '.join(known) or 'none'}"
        super().__init__(message)
        self.kind, self.name, self.known, self.message = kind, name, known, message

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class Registry(Generic[T]):
    """Named entries of one kind of component, in registration order."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        # The modules that register the built-in entries, imported on the first lookup: a
        # reader of the registry sees every component without importing each module itself,
        # and this module imports none of them (they import it).
        self._modules = modules
        self._loaded = not modules

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a module being imported may itself read the registry
            try:
                for module in self._modules:
                    importlib.import_module(module)
            except BaseException:
                self._loaded = False  # a failed import is reported again, not left half-loaded
                raise

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name``; returns the entry, so it can close a definition."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, not {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return ``name``'s entry (a test's temporary component)."""
        self._load()
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownComponentError(self.kind, name, self.names()) from None

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def items(self) -> tuple[tuple[str, T], ...]:
        self._load()
        return tuple(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


#: Signalling schemes (mpsim/proto/schemes/): entries are scheme objects, keyed by their name.
SCHEMES: Registry = Registry("scheme", ("mpsim.proto.schemes",))
#: Middleboxes an access network can hold: entries build their per-direction filters.
MIDDLEBOXES: Registry = Registry("middlebox", ("mpsim.proto.middlebox",))
#: Proxies a scenario can run (RFC 8803 converter, MP_CONVERT, SOCKS5): entries build the host.
PROXIES: Registry = Registry("proxy", ("mpsim.proto.convert", "mpsim.proto.mp_convert_proxy",
                                       "mpsim.proto.socks5_proxy"))
#: Server kinds (legacy, TFO, MPTCP, closed, unreachable): entries build the host.
SERVERS: Registry = Registry("server", ("mpsim.proto.server",))
