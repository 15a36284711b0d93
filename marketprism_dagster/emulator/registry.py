"""The venues the emulator serves: each venue module declares its servers, the registry collects them.

A venue module of this package (a module with a top-level ``SERVERS`` tuple of
:class:`ServerSpec`) is found and registered on first use (only those modules are imported);
:func:`register` adds one from anywhere else (a test, a plugin). A spec says everything the
generic modules need to know:

* ``build``: makes the venue object for one running server (:class:`ServedVenue`): its
  ``routes()`` (WS paths and REST endpoints, history endpoints included; synth generators and
  replay readers live behind them) and its ``fault_response(rule)`` (the venue's body of an
  injected REST error);
* ``markets``: the market ids the server serves, with default symbols; ``aliases``: more names
  for ``--venue`` and fault targets (an alias may name several servers);
* ``periods``: default cadences of its slow streams (``EmulatorConfig.periods`` overrides);
* ``options``: its own settings (:class:`VenueOption`: ``EmulatorConfig(**{name: value})``, CLI
  ``--name-with-dashes VALUE``);
* fault hooks: ``fault_kinds`` (the venue-specific kinds it supports), ``fault_paths`` (default
  ``path=`` of REST kinds its handlers apply), ``fault_codes`` (the codes ``rest_code_200`` may
  answer) and ``frame_faults`` (WS kind -> payload transform, e.g. a corrupted checksum).

The order of servers (ports ``port + i`` when a base port is set) is module name order, then
declaration order in the module; registered extras come last.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from .context import VenueContext
    from .faults import FaultRule

Handler = Callable[["web.Request"], Any]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of a venue server: ``ws`` (a WebSocket upgrade) or ``rest`` (GET)."""

    kind: str  # ws | rest
    path: str  # aiohttp pattern, e.g. "/ws/{streams:.+}"
    handler: Handler


class ServedVenue(Protocol):
    """What ``ServerSpec.build`` returns: one running venue server's endpoints and error bodies."""

    def routes(self) -> list[Route]: ...

    def fault_response(self, rule: FaultRule) -> web.Response: ...


@dataclass(frozen=True)
class VenueOption:
    """A setting of one venue: ``EmulatorConfig(name=value)``, CLI ``--name-with-dashes VALUE``."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    kind: Callable[[str], Any] = str  # CLI text -> value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value if allowed; ValueError naming the option, the allowed values and the flag."""
        if value is None and self.default is None:
            return None
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} {value!r}: use one of {', '.join(self.choices)} (CLI: {self.flag})")
        if self.minimum is not None and (not isinstance(value, int | float) or value < self.minimum):
            raise ValueError(f"{self.name} {value!r}: use a number >= {self.minimum:g} (CLI: {self.flag})")
        return value

    def from_text(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"{self.flag} {text!r}: not a valid value") from None
        return self.check(value)


@dataclass(frozen=True)
class ServerSpec:
    """One emulated venue server, as its venue module declares it (see the module docstring)."""

    name: str
    build: Callable[[VenueContext], ServedVenue]
    markets: Mapping[str, tuple[str, ...]]
    aliases: tuple[str, ...] = ()
    periods: Mapping[str, float] = field(default_factory=dict)
    options: tuple[VenueOption, ...] = ()
    fault_kinds: frozenset[str] = frozenset()
    fault_paths: Mapping[str, str] = field(default_factory=dict)
    fault_codes: Mapping[str, str] = field(default_factory=dict)
    frame_faults: Mapping[str, Callable[[bytes], bytes]] = field(default_factory=dict)


_SPECS: dict[str, ServerSpec] = {}
_discovered = False
_DECLARES = re.compile(r"^SERVERS\b", re.MULTILINE)  # a venue module: a top-level SERVERS


def _discover() -> None:
    """Register the SERVERS of every module of this package, in module name order (once)."""
    global _discovered
    if _discovered:
        return
    found: list[ServerSpec] = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if _DECLARES.search(path.read_text(encoding="utf-8")):  # import venue modules only (not the CLI)
            found += importlib.import_module(f"{__package__}.{path.stem}").SERVERS
    _discovered = True
    register(*found)


def register(*specs: ServerSpec) -> None:
    """Add servers (a venue module outside this package, a test); a name may be registered once."""
    _discover()
    for spec in specs:
        if spec.name in _SPECS and _SPECS[spec.name] is not spec:
            raise ValueError(f"emulator server {spec.name!r} is already registered")
        _SPECS[spec.name] = spec


def unregister(name: str) -> None:
    _SPECS.pop(name, None)


def servers() -> dict[str, ServerSpec]:
    """Server name -> spec, in server order."""
    _discover()
    return dict(_SPECS)


def server(name: str) -> ServerSpec:
    try:
        return servers()[name]
    except KeyError:
        raise ValueError(f"unknown emulator server {name!r}: use one of {', '.join(servers())}") from None


def names() -> dict[str, tuple[str, ...]]:
    """Every name a user may give a venue by (server, market id, alias) -> the servers it means."""
    out: dict[str, list[str]] = {}
    for spec in servers().values():
        for name in (spec.name, *spec.markets, *spec.aliases):
            targets = out.setdefault(name, [])
            if spec.name not in targets:
                targets.append(spec.name)
    return {name: tuple(targets) for name, targets in out.items()}


def resolve(name: str) -> tuple[str, ...]:
    """A server name, market id or alias -> the servers it names; ValueError lists the names."""
    try:
        return names()[name]
    except KeyError:
        raise ValueError(f"unknown venue {name!r}: use one of {', '.join(sorted(names()))}") from None


def market_servers() -> dict[str, str]:
    """Market id -> the server that serves it."""
    return {market: spec.name for spec in servers().values() for market in spec.markets}


def default_symbols() -> dict[str, tuple[str, ...]]:
    return {market: tuple(syms) for spec in servers().values() for market, syms in spec.markets.items()}


def default_periods() -> dict[str, float]:
    out: dict[str, float] = {}
    for spec in servers().values():
        out.update(spec.periods)
    return out


def options() -> dict[str, VenueOption]:
    """Option name -> declaration, over every server (servers may share one option)."""
    out: dict[str, VenueOption] = {}
    for spec in servers().values():
        for option in spec.options:
            known = out.setdefault(option.name, option)
            if known != option:
                raise ValueError(f"emulator option {option.name!r} is declared twice with different defaults")
    return out


def supporting(kind: str) -> tuple[str, ...]:
    """The servers that declare a venue-specific fault kind."""
    return tuple(spec.name for spec in servers().values() if kind in spec.fault_kinds)
