"""The ``forward``, ``cache`` and ``loop`` config sections: YAML nodes → frozen dataclasses.

All validation for forwarding lives here, at load time, so that a bad upstream address, an
unreadable CA bundle or an empty resolv.conf is a :class:`~kubedns.configbase.ConfigError`
naming the file, the key and what was expected, never a failure at the first query.  Key names
and defaults follow CoreDNS's *forward*, *cache* and *loop* plugins so Corefile users recognise
them; the few deviations are noted on the fields.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from kubedns.configbase import ConfigError, Node, parse_duration
from kubedns.forward.upstream import UpstreamSpec, parse_upstream, read_resolv_conf

__all__ = [
    "CacheConfig",
    "ConfigError",
    "ForwardConfig",
    "LoopConfig",
    "POLICIES",
    "parse_cache",
    "parse_forward",
    "parse_loop",
]

POLICIES = ("random", "round_robin", "sequential")
MAX_UPSTREAMS = 15


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """Where and how to forward names outside the cluster zones (CoreDNS *forward*)."""

    to: tuple[UpstreamSpec, ...] = (UpstreamSpec("8.8.8.8"),)
    tls_servername: str | None = None  # None: verify the certificate against the upstream's IP
    tls_ca: str | None = None  # PEM bundle path; None: the platform trust store
    policy: str = "random"
    max_fails: int = 2  # consecutive failures before an upstream is marked down; 0: never
    health_check: float = 0.5  # probe interval while an upstream is down
    expire: float = 10.0  # idle TCP/TLS connections are closed after this
    max_concurrent: int = 1000  # requests in flight (kubeadm's value; CoreDNS's own default is unlimited); 0: unlimited
    force_tcp: bool = False
    prefer_udp: bool = False
    except_zones: tuple[str, ...] = ()  # lower-case, no trailing dot; "" is the root
    timeout: float = 2.0  # per try (CoreDNS's fixed read timeout)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Bounds and TTL rules of the answer cache (CoreDNS *cache*)."""

    ttl: int = 3600  # cap for positive answers
    min_ttl: int = 5  # floor for positive and negative answers
    denial_ttl: int = 1800  # cap for NXDOMAIN/NODATA (RFC 2308 TTL)
    servfail_ttl: float = 5.0  # upstream SERVFAIL cached this long; 0: never
    size: int = 9984  # entries
    max_bytes: int = 6 << 20  # memory the entries may take (wire size + object overhead), LRU evicted
    prefetch_amount: int = 0  # 0: prefetch off
    prefetch_duration: float = 60.0  # "popular" = amount hits with no gap this long
    prefetch_percentage: int = 10  # prefetch when the TTL left drops below this % (or 1 s)
    serve_stale: float = 0.0  # how long past expiry an entry may be served; 0: off
    serve_stale_mode: str = "verified"  # verified: only when upstreams fail; immediate: CoreDNS's default
    # zones (lower case, no trailing dot; "" is the root) whose positive / negative answers are
    # never cached (CoreDNS's `disable success|denial ZONES`; kubeadm's default for its cluster zone)
    disable_success: tuple[str, ...] = ()
    disable_denial: tuple[str, ...] = ()
    # CoreDNS's `success CAPACITY [TTL [MINTTL]]` / `denial CAPACITY [TTL [MINTTL]]`: entries each
    # kind may hold (0: no bound of its own, only ``size``); SERVFAIL entries count as denials, as
    # in CoreDNS's denial cache.  ``size`` stays the bound on all entries, ``max_bytes`` on memory.
    success_size: int = 0
    denial_size: int = 0
    denial_min_ttl: int | None = None  # floor for denials; None: min_ttl
    keepttl: bool = False  # hits carry the TTL as stored, not counting down (CoreDNS's keepttl)
    zones: tuple[str, ...] = ()  # only names in these zones are cached; (): every name of the block


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Forwarding-loop detection (CoreDNS *loop*, but it isolates the looping upstream instead of exiting)."""

    enabled: bool = False
    recheck: float = 30.0  # re-probe period; 0: probe only at start


# -- forward -----------------------------------------------------------------------------------

_FORWARD_KEYS = {
    "to",
    "tls_servername",
    "tls_ca",
    "policy",
    "max_fails",
    "health_check",
    "expire",
    "max_concurrent",
    "force_tcp",
    "prefer_udp",
    "except",
    "timeout",
}


MAX_FILE_BYTES = 16 << 20  # resolv.conf and CA bundles; bounds what a wrong path can make us read


def _is_path(text: str) -> bool:
    return text.startswith(("/", "./", "../"))


def _regular_file(node: Node, path: str, what: str) -> None:
    """Raise unless ``path`` is a regular file of sane size: a directory, a FIFO (blocks the start)
    or a device such as /dev/zero (read until memory runs out) is a config error."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise node.error(f"a readable {what} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise node.error(f"a {what} that is a regular file (not a directory, device or pipe)")
    if st.st_size > MAX_FILE_BYTES:
        raise node.error(f"a {what} of at most {MAX_FILE_BYTES >> 20} MiB")


_HOST_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def _server_name(node: Node, name: str) -> str:
    """A TLS server name: a DNS name the upstream's certificate can carry (``dns.example.org``)."""
    name = name.strip().rstrip(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(lab) for lab in name.split(".")):
        raise node.error('a DNS name for the upstream certificate, like "dns.example.org"')
    return name


def _parse_to(node: Node) -> tuple[UpstreamSpec, ...]:
    if isinstance(node.value, str):
        node.value = [node.value]
    expect = 'upstreams like "10.0.0.1", "10.0.0.1:5353", "[::1]:53", "tls://9.9.9.9" or a resolv.conf path'
    out: list[UpstreamSpec] = []
    for item in node.items():
        if not isinstance(item.value, str) or not item.value.strip():
            raise item.error(expect)
        text = item.value.strip()
        if _is_path(text):
            _regular_file(item, text, "resolv.conf file")
            try:
                addrs = read_resolv_conf(text)
            except OSError as e:
                raise item.error(f"a readable resolv.conf file ({e.strerror})") from None
            if not addrs:
                raise item.error("a resolv.conf file with at least one nameserver line")
            for a in addrs:
                try:
                    out.append(parse_upstream(a))
                except ValueError as e:
                    raise item.error(f"nameserver lines holding IP addresses ({a!r}: {e})") from None
            continue
        try:
            spec = parse_upstream(text)
        except ValueError as e:
            raise item.error(f"{expect} ({e})") from None
        if spec.servername is not None:
            _server_name(item, spec.servername)
        out.append(spec)
    if not 1 <= len(out) <= MAX_UPSTREAMS:
        raise node.error(f"from 1 to {MAX_UPSTREAMS} upstreams (found {len(out)})")
    return tuple(out)


def _parse_ca(node: Node) -> str | None:
    path = node.optional_string()
    if path is None:
        return None
    _regular_file(node, path, "PEM CA bundle")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES)
    except OSError as e:
        raise node.error(f"a readable PEM CA bundle ({e.strerror})") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise node.error("a PEM file holding at least one CERTIFICATE")
    return path


def parse_forward(node: Node) -> ForwardConfig:
    """Read a ``forward`` section: a mapping, or shorthand ``forward: 10.0.0.1`` / a list of upstreams."""
    if isinstance(node.value, (str, list)):
        node.value = {"to": node.value}
    node.mapping(_FORWARD_KEYS)
    d = ForwardConfig()
    to = _parse_to(node.get("to")) if node.has("to") else d.to
    servername_node = node.get("tls_servername", None)
    servername = servername_node.optional_string()
    if servername is not None:
        servername = _server_name(servername_node, servername)
        if any(u.servername for u in to):
            raise servername_node.error("no tls_servername when an upstream names its own (tls://IP%name)")
    return ForwardConfig(
        to=to,
        tls_servername=servername,
        tls_ca=_parse_ca(node.get("tls_ca", None)),
        policy=node.get("policy", d.policy).choice(POLICIES),
        max_fails=node.get("max_fails", d.max_fails).integer(0, 1000),
        health_check=node.get("health_check", d.health_check).duration(0.01, 3600),
        expire=node.get("expire", d.expire).duration(0, 3600),
        max_concurrent=node.get("max_concurrent", d.max_concurrent).integer(0),
        force_tcp=node.get("force_tcp", False).boolean(),
        prefer_udp=node.get("prefer_udp", False).boolean(),
        except_zones=node.get("except", []).zones(allow_empty=True),
        timeout=node.get("timeout", d.timeout).duration(0.01, 60),
    )


# -- cache -------------------------------------------------------------------------------------

_CACHE_KEYS = {
    "ttl", "min_ttl", "denial_ttl", "servfail", "size", "max_bytes", "prefetch", "serve_stale", "disable",
    "success", "denial", "keepttl", "zones",
}
#: CoreDNS's default capacity of each of its two caches (256 shards of 39 entries)
KIND_SIZE = 9984
_BYTE_UNITS = {"": 1, "k": 1000, "ki": 1 << 10, "m": 1000**2, "mi": 1 << 20, "g": 1000**3, "gi": 1 << 30}
_BYTES_RE = re.compile(r"(\d+)\s*([kmg]i?)?b?", re.IGNORECASE)


def _bytes(node: Node, lo: int, hi: int) -> int:
    """A size in bytes: a number, or a string with a unit as Kubernetes writes them (``"32Mi"``)."""
    expect = f'a size from {lo >> 10}Ki to {hi >> 30}Gi: bytes as a number, or a string like "32Mi" or "64M"'
    v = node.value
    if isinstance(v, bool):
        raise node.error(expect)
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and (m := _BYTES_RE.fullmatch(v.strip())):
        n = int(m.group(1)) * _BYTE_UNITS[(m.group(2) or "").lower()]
    else:
        raise node.error(expect)
    if not lo <= n <= hi:
        raise node.error(expect)
    return n
_STALE_DEFAULT = 3600.0


def _parse_prefetch(node: Node) -> tuple[int, float, int]:
    d = CacheConfig()
    if node.value is None or node.value is False:
        return 0, d.prefetch_duration, d.prefetch_percentage
    if isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.integer(0), d.prefetch_duration, d.prefetch_percentage
    if not isinstance(node.value, dict):
        raise node.error("a number of queries (amount), or a mapping with amount, duration, percentage")
    node.mapping({"amount", "duration", "percentage"})
    amount = node.get("amount").integer(1)
    duration = node.get("duration", d.prefetch_duration).duration(0.001)
    pct_node = node.get("percentage", d.prefetch_percentage)
    if isinstance(pct_node.value, str) and pct_node.value.strip().endswith("%"):
        digits = pct_node.value.strip()[:-1]
        if digits.isascii() and digits.isdigit():  # "50%"; else the message shows what was written
            pct_node.value = int(digits)
    return amount, duration, pct_node.integer(10, 90)


def _parse_stale(node: Node) -> tuple[float, str]:
    v = node.value
    if v is None or v is False:
        return 0.0, "verified"
    if v is True:
        return _STALE_DEFAULT, "verified"
    if isinstance(v, dict):
        node.mapping({"duration", "refresh_mode"})
        dur = node.get("duration", _STALE_DEFAULT).duration(0.001)
        mode = node.get("refresh_mode", "verified").choice(("verified", "immediate"))
        return dur, mode
    return node.duration(0.001), "verified"


MAX_TTL = 7 * 86400
MAX_SERVFAIL_TTL = 5


def _ttl(node: Node, hi: int = MAX_TTL) -> int:
    """A cache TTL: whole seconds, as a number (``30``) or a duration string (``"30s"``, ``"1m"``).

    Durations anywhere in the config may be strings; TTLs go on the wire as whole seconds, so a
    value with a fraction of a second (``"500ms"``, ``"1.5s"``) is rejected rather than rounded.
    """
    expect = f'a whole number of seconds from 0 to {hi}, as a number like 30 or a string like "30s", "5m", "1h"'
    if isinstance(node.value, bool):
        raise node.error(expect)
    try:
        secs = parse_duration(node.value)
    except ValueError:
        raise node.error(expect) from None
    whole = round(secs)
    if abs(secs - whole) > 1e-9 or not 0 <= whole <= hi:
        raise node.error(expect)
    return int(whole)


def _parse_servfail(node: Node) -> float:
    """How long an upstream SERVFAIL is cached: 0 (never) up to 5 s.

    CoreDNS's ``servfail`` defaults to 5 s and accepts up to 5 minutes; here 5 s is the most, so
    that a transient upstream failure is not pinned on clients (the README promises "SERVFAIL
    cached 5 s at most").
    """
    secs = _ttl(node)
    if secs > MAX_SERVFAIL_TTL:
        raise node.error(
            f"a duration from 0s to at most {MAX_SERVFAIL_TTL}s "
            "(SERVFAIL answers are cached 5 s at most; 0 turns caching them off)"
        )
    return float(secs)


def _flag(node: Node) -> bool:
    """An option without arguments: ``true``/``false``, or present and empty (``keepttl:``)."""
    if node.value is None or isinstance(node.value, bool):
        return node.value is not False
    raise node.error("no argument (true or false in YAML)")


def _parse_kind(node: Node) -> tuple[int | None, int | None, int | None]:
    """``success``/``denial``: ``{capacity, ttl, min_ttl}`` (CoreDNS's ``CAPACITY [TTL [MINTTL]]``),
    or a bare number meaning the capacity; each part None when not given."""
    v = node.value
    if v is None:
        return None, None, None
    if isinstance(v, int) and not isinstance(v, bool):
        node.value = {"capacity": v}
    elif not isinstance(v, dict):
        raise node.error("a capacity (entries), or a mapping with capacity, ttl, min_ttl")
    node.mapping({"capacity", "ttl", "min_ttl"})
    cap = node.get("capacity", None)
    capacity = cap.integer(1, 5_000_000) if cap.value is not None else None
    ttl = None
    if node.has("ttl"):
        ttl_node = node.get("ttl")
        ttl = _ttl(ttl_node)
        if ttl == 0:  # as CoreDNS: "cache TTL can not be zero or negative"
            raise ttl_node.error(f"a whole number of seconds from 1 to {MAX_TTL} (the most an answer is kept)")
    min_ttl = _ttl(node.get("min_ttl")) if node.has("min_ttl") else None
    return capacity, ttl, min_ttl


def parse_cache(node: Node) -> CacheConfig:
    """Read a ``cache`` section: a mapping, or ``cache: 30`` / ``cache: "30s"`` meaning ``{ttl: 30}``.

    ``ttl``, ``min_ttl``, ``denial_ttl`` and ``servfail`` take whole seconds, as a number or a
    duration string like the rest of the config.
    """
    v = node.value
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        node.value = {"ttl": v}
    elif isinstance(v, str):
        try:
            parse_duration(v)
        except ValueError:
            raise node.error('a mapping, or a TTL like 30 or "30s" (meaning {ttl: ...})') from None
        node.value = {"ttl": v}
    node.mapping(_CACHE_KEYS)
    d = CacheConfig()
    s_cap, s_ttl, s_min = _parse_kind(node.get("success", None))
    n_cap, n_ttl, n_min = _parse_kind(node.get("denial", None))
    base_ttl = _ttl(node.get("ttl", d.ttl))
    ttl = s_ttl if s_ttl is not None else base_ttl  # `success CAPACITY TTL` overrides `cache TTL`
    min_key = "success.min_ttl" if s_min is not None else "min_ttl"
    min_node = node.get("min_ttl", min(d.min_ttl, ttl))
    min_ttl = s_min if s_min is not None else _ttl(min_node)
    if min_ttl > ttl:
        what = "the success ttl" if s_ttl is not None or s_min is not None else "ttl"
        raise ConfigError(node.path, f"{node.key}.{min_key}", f"a whole number of seconds not above {what} ({ttl})",
                          min_ttl)
    # As CoreDNS's `cache TTL`: the one cap applies to denials too unless they get their own.
    denial_ttl = n_ttl if n_ttl is not None else _ttl(node.get("denial_ttl", min(d.denial_ttl, base_ttl)))
    # the denials' floor: their own MINTTL, else the `min_ttl` key (None: the same as min_ttl)
    denial_min: int | None = n_min if n_min is not None else (None if s_min is None else _ttl(min_node))
    if n_min is not None and n_min > denial_ttl:
        raise ConfigError(node.path, f"{node.key}.denial.min_ttl",
                          f"a whole number of seconds not above the denial ttl ({denial_ttl})", n_min)
    # entries: without per-kind capacities `size` bounds all entries together (LRU); with one,
    # each kind is bounded on its own (CoreDNS's default 9984 for a kind not given) and `size`,
    # unless written, is their sum, so denials can never push successes out (or the reverse)
    split = s_cap is not None or n_cap is not None
    success_size = (s_cap or KIND_SIZE) if split else 0
    denial_size = (n_cap or KIND_SIZE) if split else 0
    size_default = success_size + denial_size if split else d.size
    amount, duration, pct = _parse_prefetch(node.get("prefetch", None))
    stale, mode = _parse_stale(node.get("serve_stale", None))
    dis = node.get("disable", None).mapping({"success", "denial"})
    return CacheConfig(
        ttl=ttl,
        min_ttl=min_ttl,
        denial_ttl=denial_ttl,
        servfail_ttl=_parse_servfail(node.get("servfail", d.servfail_ttl)),
        size=node.get("size", size_default).integer(1, 10_000_000),
        max_bytes=_bytes(node.get("max_bytes", d.max_bytes), 64 << 10, 64 << 30),
        prefetch_amount=amount,
        prefetch_duration=duration,
        prefetch_percentage=pct,
        serve_stale=stale,
        serve_stale_mode=mode,
        disable_success=dis.get("success", []).zones(allow_empty=True),
        disable_denial=dis.get("denial", []).zones(allow_empty=True),
        success_size=success_size,
        denial_size=denial_size,
        denial_min_ttl=denial_min,
        keepttl=_flag(node.get("keepttl", False)),
        zones=node.get("zones", []).zones(allow_empty=True),
    )


# -- loop --------------------------------------------------------------------------------------


def parse_loop(node: Node) -> LoopConfig:
    """Read a ``loop`` section: ``loop: {}``, ``loop:`` (null) or ``loop: true`` enable it."""
    v = node.value
    if v is True:
        return LoopConfig(enabled=True)
    if v is False:
        return LoopConfig(enabled=False)
    if v is not None and not isinstance(v, dict):
        raise node.error("true, false, or a mapping (optionally with recheck: DURATION)")
    node.mapping({"recheck"})
    return LoopConfig(enabled=True, recheck=node.get("recheck", LoopConfig().recheck).duration(0, 86400))
