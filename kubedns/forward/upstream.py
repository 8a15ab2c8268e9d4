"""Upstream addresses as written in the config: ``IP``, ``IP:port``, ``[v6]:port``, ``tls://IP[:port]``.

Pure parsing, no I/O except :func:`read_resolv_conf` (which the config layer calls once at parse
time for a ``to: /etc/resolv.conf`` entry).  Kept apart from the transports so that config
validation never imports the reactor, and so the forwarder, its metrics and its logs all name an
upstream the same way (``str(spec)``, e.g. ``127.0.0.1:53`` or ``tls://[::1]:853``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["UpstreamSpec", "parse_upstream", "read_resolv_conf", "DNS_PORT", "DOT_PORT"]

DNS_PORT = 53
DOT_PORT = 853


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream: an IP literal, a port, plain DNS or DNS-over-TLS, an optional per-upstream SNI."""

    host: str
    port: int = DNS_PORT
    tls: bool = False
    servername: str | None = None  # from ``tls://IP%name``; else the forward-wide tls_servername

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        h = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{'tls://' if self.tls else ''}{h}:{self.port}"


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after ']'")
        port_s = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    else:  # a bare IPv4 address, or a bare IPv6 address (two or more colons)
        host, port_s = text, ""
    if port_s == "":
        port = default_port
    elif port_s.isdigit():
        port = int(port_s)
    else:
        raise ValueError(f"port {port_s!r} is not a number")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return str(addr), port


def parse_upstream(text: str) -> UpstreamSpec:
    """Parse one ``to`` entry (not a file path); raise ValueError with a short reason.

    Accepted: ``1.2.3.4``, ``1.2.3.4:5353``, ``::1``, ``[::1]:5353``, ``dns://1.2.3.4``,
    ``tls://1.2.3.4`` (port 853), ``tls://[::1]:8853``, ``tls://9.9.9.9%dns.quad9.net[:port]``.
    """
    s = text.strip()
    tls = False
    low = s.lower()
    if low.startswith("tls://"):
        tls, s = True, s[6:]
    elif low.startswith("dns://"):
        s = s[6:]
    elif "://" in s:
        raise ValueError(f"unsupported scheme {s.split('://')[0]!r} (use dns:// or tls://)")
    servername = None
    if "%" in s:
        if not tls:
            raise ValueError("a %servername is only allowed with tls://")
        before, after = s.split("%", 1)
        # tls://9.9.9.9%dns.quad9.net:10853 -> the port trails the name
        if ":" in after:
            after, port_s = after.rsplit(":", 1)
            before = f"[{before}]:{port_s}" if ":" in before else f"{before}:{port_s}"
        if not after:
            raise ValueError("empty server name after '%'")
        s, servername = before, after
    if not s:
        raise ValueError("empty address")
    host, port = _split_host_port(s, DOT_PORT if tls else DNS_PORT)
    return UpstreamSpec(host, port, tls, servername)


def read_resolv_conf(path: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf-style file, in order (OSError if unreadable)."""
    out: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                addr = fields[1].split("%", 1)[0]  # drop an IPv6 zone index: fe80::1%eth0
                out.append(addr)
    return out
