"""Building blocks for reading the YAML config: errors that name file and key, and value parsers.

Every check the config makes goes through a :class:`Node`, which knows the file it came from and
the dotted key path (``servers[0].kubernetes.ttl``) that led to it.  That way every error says
*which file, which key, what was expected and what was found* without each caller formatting it.
Kept apart from :mod:`kubedns.config` so that section parsers in other packages (forward, cache,
health) can use the same helpers without importing the whole config schema.
"""

from __future__ import annotations

import ipaddress
import math
import re
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Address",
    "ConfigError",
    "Node",
    "normalize_zone",
    "parse_duration",
]


_FOUND = reprlib.Repr()  # the value found, shortened: a message is one readable line, whatever was written
_FOUND.maxstring = _FOUND.maxother = 100
_FOUND.maxlist = _FOUND.maxtuple = _FOUND.maxset = _FOUND.maxdict = 4
_FOUND.maxlevel = 2
_MAX_PART = 300  # characters of the expectation or of the value shown


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_PART else text[: _MAX_PART - 3] + "..."


def short_repr(value: Any) -> str:
    """``repr`` cut to a readable length (a config value may be megabytes, or an alias bomb)."""
    return _shorten(_FOUND.repr(value))


def key_name(name: str) -> str:
    """A mapping key as it appears in a key path: quoted if it would break the one-line message."""
    return name if name.isprintable() and len(name) <= 100 else short_repr(name)


class ConfigError(ValueError):
    """A config problem; ``str()`` names the file, the key, what was expected and what was found."""

    def __init__(self, path: str, key: str, expected: str, found: Any = None, *, has_found: bool = True):
        self.path = path
        self.key = key
        self.expected = expected
        where = f"{path}: {key}" if key else path
        msg = f"{where}: expected {_shorten(expected)}"
        if has_found:
            msg += f", got {short_repr(found)}"
        super().__init__(msg)


_MISSING = object()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# A zone label as names are matched (lower case): a space, a "dns://" or ":53", or a non-ASCII
# name (queries carry xn-- labels) would never match a query; "/" is for RFC 2317 reverse zones.
_LABEL = re.compile(r"[a-z0-9_/-]+")


def parse_duration(value: Any) -> float:
    """Seconds from ``5``, ``0.5``, ``"2s"``, ``"500ms"``, ``"1m"`` or ``"1h"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    secs: float | None = None
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("negative duration")
        secs = float(value) if value < 1e300 else math.inf  # float(10**400) would raise OverflowError
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            secs = float(m.group(1)) * _UNITS[m.group(2)]
    # .nan and .inf are YAML floats, and "9"*400 overflows to inf: none is a duration (NaN
    # would even pass every range check, as every comparison with it is false)
    if secs is None or not math.isfinite(secs):
        raise ValueError(f"not a duration: {value!r}")
    return secs


def normalize_zone(zone: str) -> str:
    """Lower-case, no trailing dot; the root zone is the empty string."""
    z = zone.strip().lower().rstrip(".")
    return z


@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` to listen on; host ``""`` means every address."""

    host: str
    port: int

    def __str__(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"


def parse_address(text: str, default_port: int | None = None) -> Address:
    """``"0.0.0.0:53"``, ``":9153"``, ``"[::1]:53"``, ``"127.0.0.1"`` (with a default port)."""
    s = text.strip()
    host: str
    port_s: str | None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        host = s[1:end]
        rest = s[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after ']'")
        port_s = rest[1:] if rest else None
    elif s.count(":") == 1:
        host, port_s = s.split(":")
    elif s.count(":") > 1:
        host, port_s = s, None  # a bare IPv6 address
    else:
        host, port_s = s, None
    if port_s is None:
        if default_port is None:
            raise ValueError("no port")
        port = default_port
    else:
        # "127.0.0.1:" is a port left out by mistake, not the default; int() would also take
        # digits of other scripts ("\u0665\u0663"), which no other tool reads as a port
        if not (port_s.isascii() and port_s.isdigit()):
            raise ValueError(f"port {short_repr(port_s)} is not a number" if port_s else "no port after ':'")
        port = int(port_s)
    if not 1 <= port <= 65535:  # port 0 would listen on a random port no client knows
        raise ValueError(f"port {port} out of range 1-65535")
    if host not in ("", "localhost"):
        try:
            # one spelling per address ("[0:0::1]" is "[::1]"), so blocks sharing it are seen to
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"{short_repr(host)} is not an IP address") from None
    return Address(host, port)


class Node:
    """A value from the YAML file with the path that leads to it, for precise error messages."""

    __slots__ = ("value", "path", "key")

    def __init__(self, value: Any, path: str, key: str = ""):
        self.value = value
        self.path = path
        self.key = key

    # -- navigation -------------------------------------------------------------------------
    def _child_key(self, name: str | int) -> str:
        if isinstance(name, int):
            return f"{self.key}[{name}]"
        name = key_name(name)
        return f"{self.key}.{name}" if self.key else name

    def error(self, expected: str, *, show: bool = True) -> ConfigError:
        return ConfigError(self.path, self.key, expected, self.value, has_found=show)

    def mapping(self, allowed: set[str] | None = None) -> Node:
        """Check this is a mapping (``None`` counts as empty) and has only ``allowed`` keys."""
        if self.value is None:
            self.value = {}
        if not isinstance(self.value, dict):
            raise self.error("a mapping")
        if allowed is not None:
            for k in self.value:
                if k not in allowed:
                    raise ConfigError(
                        self.path,
                        self._child_key(str(k)),
                        "one of the keys " + ", ".join(sorted(allowed)),
                        k,
                    )
        return self

    def has(self, name: str) -> bool:
        return isinstance(self.value, dict) and name in self.value

    def get(self, name: str, default: Any = _MISSING) -> Node:
        if isinstance(self.value, dict) and name in self.value:
            return Node(self.value[name], self.path, self._child_key(name))
        if default is _MISSING:
            raise ConfigError(self.path, self._child_key(name), "a value (the key is required)", has_found=False)
        return Node(default, self.path, self._child_key(name))

    def items(self) -> Iterator[Node]:
        if not isinstance(self.value, list):
            raise self.error("a list")
        for i, v in enumerate(self.value):
            yield Node(v, self.path, self._child_key(i))

    # -- scalars ------------------------------------------------------------------------------
    def string(self, *, allow_empty: bool = False) -> str:
        if not isinstance(self.value, str) or (not allow_empty and not self.value.strip()):
            raise self.error("a non-empty string")
        return self.value

    def optional_string(self) -> str | None:
        return None if self.value is None else self.string()

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error("true or false")
        return self.value

    def integer(self, lo: int | None = None, hi: int | None = None) -> int:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" from {lo} to {hi}" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
            raise self.error(f"a whole number{rng}")
        return v

    def duration(self, lo: float = 0.0, hi: float | None = None) -> float:
        try:
            secs = parse_duration(self.value)
        except ValueError:
            raise self.error('a duration: seconds as a number, or a string like "2s", "500ms", "1m"') from None
        if secs < lo or (hi is not None and secs > hi):
            rng = f"at least {lo:g}s" + (f" and at most {hi:g}s" if hi is not None else "")
            raise self.error(f"a duration {rng}")
        return secs

    def choice(self, options: tuple[str, ...]) -> str:
        if self.value not in options:
            raise self.error("one of " + " | ".join(options))
        return str(self.value)

    def zone(self) -> str:
        s = self.string().strip().lower()
        z = s[:-1] if s.endswith(".") else s  # one trailing dot: "a.." and ".." are not names
        labels = z.split(".") if z else []
        if any(not lab or len(lab) > 63 or not _LABEL.fullmatch(lab) for lab in labels) or len(z) > 253:
            raise self.error(
                'a DNS zone name like "cluster.local" or "." (ASCII letters, digits, "-", "_", "/"; '
                "international names as xn--)"
            )
        return z

    def zones(self, *, allow_empty: bool = False) -> tuple[str, ...]:
        if isinstance(self.value, str):
            self.value = [self.value]
        out = tuple(n.zone() for n in self.items())
        if not out and not allow_empty:
            raise self.error("a non-empty list of zones")
        return out

    def address(self, default_port: int | None = None) -> Address:
        expect = 'an address "host:port" such as "0.0.0.0:53" or "[::1]:53"'
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.error(expect)
        try:
            return parse_address(self.value, default_port)
        except ValueError as e:
            raise self.error(f"{expect} ({e})") from None
