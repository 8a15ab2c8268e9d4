"""What a cluster answer depends on: so a store change drops only the answers it can alter.

A kept answer (a pre-encoded one in :class:`kubedns.serve.fastcache.FastCache`, or a computed one in
its memo) is tagged at insert with *dependency keys*; a store change names the keys it touched
(:attr:`kubedns.k8s.store.Store.last_change`), and only the answers tagged with one of them are
dropped.  Dropping costs the names touched, not the entries kept.

The keys of a name follow from its labels alone, because :class:`kubedns.dns.records.ClusterZones`
reads the store through a handful of lookups, each keyed by a part of the name:

* ``<ns>.svc`` and ``<ns>.pod``: the namespace's existence → ``(store, "ns", ns)``;
* ``<svc>.<ns>.svc`` and every name under it (SRV, ``_proto``, endpoint hostnames, and the
  negative answers there): the Service and its slices → ``(store, "svc", ns, svc)``;
* ``<a-b-c-d>.<ns>.pod``: the namespace, and (``pods verified``) the pods of that IP →
  ``(store, "ns", ns)``, ``(store, "pod", ip)``;
* ``<reversed ip>.in-addr.arpa`` / ``ip6.arpa``: ``(store, "ip", ip)``;
* the apex (its NS glue) and ``ns.dns``: the kube-system/kube-dns Service;
* ``dns-version``, ``dns``, names of no known shape: nothing (constant answers).

The SOA serial moves with every change and is in every negative answer, so it is not a key:
the fast path rewrites the serial of a kept answer in place when it moved (:class:`SerialPatch`)
and the memo recomputes an answer whose SOA is not the current one.  An answer nobody tagged
(another plugin's, cacheable but without keys) gets :data:`ANY`, dropped by every store change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.names import dns

from kubedns.dns.records import _ip_from_dashes, _ip_from_reverse
from kubedns.dns.wire import name_end, record_heads

if TYPE_CHECKING:
    from kubedns.dns.records import Answer, ClusterZones

__all__ = ["ANY", "SerialPatch", "cluster_deps", "serial_current", "soa_serial_offsets"]

#: The key of answers whose dependencies are unknown: dropped whenever any store changes.
ANY: tuple[str] = ("*",)


def cluster_deps(clusters: ClusterZones, zone: str, lname: str) -> tuple[tuple[Any, ...], ...]:
    """The dependency keys of ``lname`` (lower-case, no trailing dot) in ``zone`` of ``clusters``."""
    store = clusters.store
    if zone.endswith("in-addr.arpa") or zone.endswith("ip6.arpa"):
        ip = _ip_from_reverse(lname)
        return ((store, "ip", ip),) if ip is not None else ()
    rel = lname[: -len(zone)].rstrip(".") if zone else lname
    labels = rel.split(".") if rel else []
    n = len(labels)
    if n == 0 or labels == ["ns", "dns"]:
        return ((store, "svc", "kube-system", "kube-dns"),)
    kind = labels[-1]
    if kind == "svc":
        if n == 2:
            return ((store, "ns", labels[0]),)
        if n >= 3:
            return ((store, "svc", labels[-2], labels[-3]),)
    elif kind == "pod":
        if n == 2:
            return ((store, "ns", labels[0]),)
        if n == 3:
            ip = _ip_from_dashes(labels[0])
            if ip is None:
                return ((store, "ns", labels[1]),)
            return ((store, "ns", labels[1]), (store, "pod", ip))
    return ()


def serial_current(ans: Answer, serial: int) -> bool:
    """False when an SOA record of a kept computed answer carries another serial than ``serial``."""
    for rr in ans.authority:
        if rr.type == dns.SOA and rr.payload.serial != serial:  # type: ignore[union-attr]
            return False
    for rr in ans.answers:
        if rr.type == dns.SOA and rr.payload.serial != serial:  # type: ignore[union-attr]
            return False
    return True


def soa_serial_offsets(buf: bytes) -> list[int]:
    """Offsets of the serial field of every SOA record in an encoded message (ValueError if
    the message cannot be walked)."""
    out = []
    for pos, rtype, _, rdlen in record_heads(buf):
        if rtype == dns.SOA:
            rdata = pos + 10
            at = name_end(buf, name_end(buf, rdata))  # after mname and rname
            if at + 4 > rdata + rdlen:
                raise ValueError("short SOA")
            out.append(at)
    return out


@dataclass(slots=True)
class SerialPatch:
    """A kept answer carrying a store's SOA serial: rewritten in place when the serial moves."""

    store: Any  # the Store whose serial the SOA records carry
    serial: int  # the serial in the kept bytes
    offsets: list[int]  # where, in the full message

    def body(self, entry: list[Any]) -> bytes:
        """The entry's body with the current serial (``entry[0]`` updated when it moved)."""
        cur = self.store.serial & 0xFFFFFFFF
        if cur != self.serial:
            buf = bytearray(entry[0])
            for off in self.offsets:
                struct.pack_into("!I", buf, off - 2, cur)
            entry[0] = bytes(buf)
            self.serial = cur
        return entry[0]
