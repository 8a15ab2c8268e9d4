"""The data behind the ``hosts`` plugin: a hosts(5) file and inline lines, read into lookup maps.

CoreDNS's *hosts* serves A, AAAA and PTR from ``/etc/hosts``-style text (k3s puts every node's
name in each cluster this way), re-reading the file every ``reload`` period.  This module is that
table, apart from the DNS answers (:mod:`kubedns.plugins.hosts`) so the parsing and the reload
rules can be tested on their own:

- a line is ``IP name [alias...]``; ``#`` starts a comment; an address with a ``%zone`` keeps
  only the address; an IPv4-mapped IPv6 address is an IPv4 one, as Go's ``net.ParseIP`` reads it;
  names are lower-cased; a name outside the plugin's zones is left out (silently, as CoreDNS
  does); a line that is not an address followed by names, or a name that cannot be a DNS name,
  is skipped with one log line naming ``file:line``;
- ``*.example.com`` matches exactly one label below ``example.com`` and gets no PTR (CoreDNS 1.14.5);
- the file and the inline lines are two maps: a lookup returns the file's addresses then the
  inline ones, as CoreDNS does; a file that disappears leaves the inline lines answering, and is
  read again when it comes back;
- the file is checked every ``reload`` seconds on the injected reactor (no thread): a change of
  its mtime, size or inode (a ConfigMap's symlink swap) re-reads it, and so does a modification
  so recent that a second write could keep the same mtime; the content is re-parsed only when
  its bytes differ, and then the ``on_change`` callbacks run (the server drops its pre-encoded
  answers there).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task
from twisted.logger import Logger

from kubedns.configbase import Node

__all__ = [
    "HostsConfig",
    "HostsMap",
    "HostsTable",
    "address_from_reverse",
    "parse_address",
    "parse_hosts",
    "parse_hosts_config",
]

log = Logger()

#: A hosts file bigger than this is refused (whole ad-blocking lists are a few MB).
MAX_FILE_BYTES = 64 << 20
#: A file modified less than this long before it was read may be written again with the same
#: mtime (coarse timestamps): it is read again at the next check even if its stat looks the same.
RACY_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class HostsConfig:
    """The ``hosts`` key of a server block (CoreDNS: ``hosts [FILE [ZONES...]] { ... }``)."""

    file: str | None = "/etc/hosts"  # None: the inline entries only
    entries: tuple[str, ...] = ()  # inline lines, "IP name [name...]"
    zones: tuple[str, ...] = ()  # empty: the block's zones
    ttl: int = 3600
    reload: float = 5.0  # seconds between checks of the file; 0: read once
    no_reverse: bool = False
    #: zones whose names not found here go to the next plugin ("" = every name); empty: none
    fallthrough: tuple[str, ...] = ()
    #: a type other than A, AAAA, PTR of a name that is here also goes to the next plugin
    fallthrough_unsupported: bool = False


_HOSTS_KEYS = {"file", "entries", "zones", "ttl", "reload", "no_reverse", "fallthrough", "fallthrough_unsupported"}
_ENTRY = "a hosts line \"IP name [name...]\" (an IPv4 or IPv6 address, then DNS names)"


def parse_hosts_config(node: Node, resolve: Callable[[str], str]) -> HostsConfig:
    """Validate a block's ``hosts`` value; ``resolve`` makes a relative file path absolute.

    ``hosts:`` alone (or ``true``, or a file path as a string) is ``/etc/hosts`` (or that
    file) with CoreDNS's defaults.  An inline entry that is not an address followed by names is
    an error here (CoreDNS would silently ignore it, hiding a mistyped option).  A file that does
    not exist yet is not: it is read when it appears, as CoreDNS does.
    """
    if node.value is None or node.value is True:
        node = Node({}, node.path, node.key)
    elif isinstance(node.value, str):
        node = Node({"file": node.value}, node.path, node.key)
    node.mapping(_HOSTS_KEYS)
    path = node.get("file", "/etc/hosts").optional_string()
    if path is not None:
        path = resolve(path)
        try:
            os.stat(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise node.get("file").error(f"a hosts file kubedns can read ({e.strerror})") from None
    en = node.get("entries", [])
    if isinstance(en.value, str):
        en.value = en.value.splitlines()
    entries = []
    for item in en.items():
        line = item.string(allow_empty=True)
        problems: list[tuple[int, str]] = []
        parse_hosts(line, ("",), True, problems)
        if problems:
            raise item.error(f"{_ENTRY}: {problems[0][1]}")
        if line.split("#", 1)[0].strip():
            entries.append(line)
    zones = node.get("zones", []).zones(allow_empty=True)
    ft = node.get("fallthrough", False)
    if ft.value is True:
        fallthrough: tuple[str, ...] = ("",)
    elif ft.value is False or ft.value is None:
        fallthrough = ()
    else:
        fallthrough = ft.zones(allow_empty=True)
    reload_node = node.get("reload", 5.0)
    reload = reload_node.duration(0.0, 86400.0)
    if 0 < reload < 0.1:
        raise reload_node.error('a duration of 0 (no reload) or at least 100ms, like "5s"')
    unsupported = node.get("fallthrough_unsupported", False).boolean()
    if unsupported and not fallthrough:
        raise node.get("fallthrough_unsupported").error("fallthrough_unsupported only with fallthrough")
    return HostsConfig(
        file=path,
        entries=tuple(entries),
        zones=zones,
        ttl=node.get("ttl", 3600).integer(1, 65535),
        reload=reload,
        no_reverse=node.get("no_reverse", False).boolean(),
        fallthrough=fallthrough,
        fallthrough_unsupported=unsupported,
    )


@dataclass(slots=True)
class HostsMap:
    """Lookup maps of one source (the file, or the inline lines); names lower-case, no final dot."""

    name4: dict[str, list[str]] = field(default_factory=dict)
    name6: dict[str, list[str]] = field(default_factory=dict)
    wild4: dict[str, list[str]] = field(default_factory=dict)  # "*.example.com" → addresses
    wild6: dict[str, list[str]] = field(default_factory=dict)
    addr: dict[str, list[str]] = field(default_factory=dict)  # address as parse_address spells it → names

    def __len__(self) -> int:
        """Addresses and reverse names held, counted as CoreDNS's ``coredns_hosts_entries``."""
        return sum(len(v) for m in (self.name4, self.name6, self.wild4, self.wild6, self.addr) for v in m.values())

    def lookup(self, lname: str, v6: bool) -> list[str]:
        exact, wild = (self.name6, self.wild6) if v6 else (self.name4, self.wild4)
        got = exact.get(lname)
        if got is None and wild:
            dot = lname.find(".")
            if dot > 0:
                got = wild.get("*" + lname[dot:])
        return got or []


_MAPPED = b"\0" * 10 + b"\xff\xff"


def parse_address(text: str) -> tuple[str, int] | None:
    """``(address, 4 | 6)`` as the hosts file's first field is read, or None if it is not one.

    The address is in one spelling per address (``inet_ntop``'s), so file entries and the
    addresses read back from PTR names meet in one dict key.  IPv4 is dotted quad only, without
    leading zeros, as Go's ``net.ParseIP`` (and glibc's ``inet_pton``) read it.
    """
    text = text.split("%", 1)[0]
    try:
        if ":" not in text:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)), 4
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    if packed[:12] == _MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:]), 4
    return socket.inet_ntop(socket.AF_INET6, packed), 6


def _in_zones(lname: str, zones: tuple[str, ...]) -> bool:
    return any(z == "" or lname == z or lname.endswith("." + z) for z in zones)


#: the usual host name: letters, digits, "-" and "_" in labels of 1 to 63 (checked in one go)
_PLAIN_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")


def _name_problem(lname: str) -> str | None:
    """Why ``lname`` cannot be a DNS owner name, or None."""
    if len(lname) <= 253 and _PLAIN_NAME.fullmatch(lname):
        return None
    if not lname.isascii() or not lname.isprintable():
        return "is not an ASCII name (international names are written as xn--)"
    if len(lname) > 253:
        return "is longer than 253 characters"
    labels = lname.split(".")
    if any(not lab or len(lab) > 63 for lab in labels):
        return "has an empty label or one longer than 63 characters"
    if any("*" in lab for lab in labels[1:]) or (labels[0] != "*" and "*" in labels[0]) or lname == "*":
        return 'has a "*" that is not a whole leftmost label above a domain'
    return None


def parse_hosts(
    text: str,
    zones: tuple[str, ...] = ("",),
    reverse: bool = True,
    problems: list[tuple[int, str]] | None = None,
) -> HostsMap:
    """Read hosts(5) text into a :class:`HostsMap`.

    ``zones`` are the plugin's zones (``""`` is the root): names outside them are left out.
    Each skipped line or name is appended to ``problems`` as ``(line number, why)`` (logged
    by the caller) rather than raised: one bad line must not hide the others.
    """
    out = HostsMap()
    everywhere = "" in zones  # the root zone holds every name
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0]
        fields = line.split()
        if not fields:
            continue
        parsed = parse_address(fields[0])
        if parsed is None or len(fields) < 2:
            if problems is not None:
                why = f"{fields[0][:60]!r} is not an IP address" if parsed is None else "an address without a name"
                problems.append((lineno, why))
            continue
        addr, version = parsed
        for name in fields[1:]:
            lname = name.lower()
            if lname.endswith(".") and lname != ".":
                lname = lname[:-1]
            bad = _name_problem(lname)
            if bad is not None:
                if problems is not None:
                    problems.append((lineno, f"name {name[:60]!r} {bad}"))
                continue
            if not everywhere and not _in_zones(lname, zones):
                continue
            if lname.startswith("*."):
                target = out.wild4 if version == 4 else out.wild6
                _add(target, lname, addr)
                continue
            _add(out.name4 if version == 4 else out.name6, lname, addr)
            if reverse:
                _add(out.addr, addr, lname)
    return out


def _log_problems(source: str, problems: list[tuple[int, str]], most: int = 20) -> None:
    """One warning per skipped line, up to ``most`` (a file of junk must not flood the log)."""
    for lineno, why in problems[:most]:
        log.warn("hosts: {source}:{line}: skipped: {why}", source=source, line=lineno, why=why)
    if len(problems) > most:
        log.warn("hosts: {source}: {n} more lines skipped", source=source, n=len(problems) - most)


def _add(m: dict[str, list[str]], key: str, value: str) -> None:
    got = m.get(key)
    if got is None:
        m[key] = [value]
    elif value not in got:  # a repeated line would repeat a record in the RRset (RFC 2181 5)
        got.append(value)


def address_from_reverse(lname: str) -> str | None:
    """The address a PTR name stands for (``4.3.2.1.in-addr.arpa`` → ``1.2.3.4``, 32 nibbles of
    ``ip6.arpa`` → the IPv6 address as parse_address spells it), or None for any other name."""
    if lname.endswith(".in-addr.arpa"):
        parts = lname[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4:
            return None
        text = ".".join(reversed(parts))
    elif lname.endswith(".ip6.arpa"):
        nibbles = lname[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
            return None
        h = "".join(reversed(nibbles))
        text = ":".join(h[i : i + 4] for i in range(0, 32, 4))
    else:
        return None
    got = parse_address(text) if text.isascii() and "%" not in text else None
    return got[0] if got is not None else None


class HostsTable:
    """The inline lines and the file of one ``hosts`` plugin, kept current on the reactor.

    ``start()`` reads the file and checks it every ``reload`` seconds (0: read once); ``stop()``
    ends the checks.  Lookups are plain dict reads of the current maps.
    """

    def __init__(
        self,
        path: str | None,
        entries: Iterable[str] = (),
        zones: tuple[str, ...] = ("",),
        reverse: bool = True,
        reload: float = 5.0,
        reactor: Any = None,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.path = path
        self.zones = zones
        self.reverse = reverse
        self.reload = reload
        problems: list[tuple[int, str]] = []
        self.inline = parse_hosts("\n".join(entries), zones, reverse, problems)
        _log_problems("inline entries", problems)
        self.file = HostsMap()
        #: bumped each time the file's maps are replaced (what answers depend on changed)
        self.generation = 0
        #: called with no argument after the file's maps changed (the server drops its fast path)
        self.on_change: list[Callable[[], None]] = []
        self.reloaded_at = 0.0  # the file's mtime when it was last read with a change (CoreDNS's)
        self._stat: tuple[int, int, int, int] | None = None
        self._racy = False
        self._digest: bytes | None = None
        self._error = ""
        self._loop: task.LoopingCall | None = None

    # -- lookups ------------------------------------------------------------------------------
    def addresses(self, lname: str, v6: bool) -> list[str]:
        """Addresses of ``lname`` (lower-case, no final dot): the file's, then the inline ones."""
        a = self.file.lookup(lname, v6)
        b = self.inline.lookup(lname, v6)
        if not b:
            return a
        return a + [x for x in b if x not in a] if a else b

    def names(self, address: str) -> list[str]:
        """Names of an address (as :func:`parse_address` prints it) for PTR answers."""
        a = self.file.addr.get(address, [])
        b = self.inline.addr.get(address, [])
        if not b:
            return a
        return a + [x for x in b if x not in a] if a else b

    def has_name(self, lname: str) -> bool:
        """Whether ``lname`` has an A or AAAA entry (another type then gets NODATA)."""
        return bool(self.addresses(lname, False) or self.addresses(lname, True))

    def __len__(self) -> int:
        return len(self.file) + len(self.inline)

    # -- the file -----------------------------------------------------------------------------
    def start(self) -> None:
        """Check the file now and then every ``reload`` seconds; a second call only checks."""
        self.check()
        if self.path is not None and self.reload > 0 and self._loop is None:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self.reactor
            self._loop.start(self.reload, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> bool:
        """Look at the file once; re-read and re-parse it if it changed.  True if the maps changed."""
        path = self.path
        if path is None:
            return False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._problem(f"hosts: {path}: file not found; serving the inline entries only")
            return self._replace(HostsMap(), None, None)
        except OSError as e:  # keep what was read last
            self._problem(f"hosts: {path}: cannot read ({e.strerror}); keeping the entries read before")
            return False
        key = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        if key == self._stat and not self._racy:
            return False
        try:
            if st.st_size > MAX_FILE_BYTES:
                raise OSError(0, f"larger than {MAX_FILE_BYTES >> 20} MiB")
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            self._problem(f"hosts: {path}: cannot read ({e.strerror}); keeping the entries read before")
            return False
        self._stat = key
        self._racy = st.st_mtime_ns + RACY_NS >= time.time_ns()
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            self._problem("")
            return False
        problems: list[tuple[int, str]] = []
        fresh = parse_hosts(data.decode("utf-8", "replace"), self.zones, self.reverse, problems)
        _log_problems(path, problems)
        self._problem("")
        changed = self._replace(fresh, key, digest)
        if changed:
            self.reloaded_at = st.st_mtime_ns / 1e9
        log.info("hosts: read {path}: {n} entries", path=path, n=len(fresh))
        return changed

    def _problem(self, message: str) -> None:
        """Log a file problem once, not once per check; ``""`` means the file reads fine again."""
        if message and message != self._error:
            log.warn("{message}", message=message)
        self._error = message

    def _replace(self, fresh: HostsMap, key: tuple[int, int, int, int] | None, digest: bytes | None) -> bool:
        self._stat = key
        if digest is None:
            self._racy = False
            if self._digest is None and not len(self.file):
                return False  # still no file
        self._digest = digest
        old, self.file = self.file, fresh
        if old == fresh:
            return False
        self.generation += 1
        for cb in list(self.on_change):
            try:
                cb()
            except Exception:
                log.failure("hosts: a change callback failed")
        return True
