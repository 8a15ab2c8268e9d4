"""Bytes-level helpers for forwarding: build the upstream query, check and decode the answer.

The forwarder does not re-encode the client's :class:`twisted.names.dns.Message`: it builds a
fresh query (our own random ID, the client's question, RD and CD bits, and an OPT record with our
UDP size and the client's DO bit) once as a *template* with ID 0, then patches the ID per try.
Answers are checked on the raw bytes (ID, QR, question) before anything is decoded, so spoofed or
stale datagrams cost a few byte comparisons and are simply ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from twisted.names import dns

__all__ = [
    "EDNS_UDP_SIZE",
    "Expect",
    "build_query",
    "client_bits",
    "decode_response",
    "encode_name",
    "is_truncated",
    "with_id",
]

EDNS_UDP_SIZE = 1232  # the DNS flag day 2020 value: no IP fragmentation on common paths
_HEADER = struct.Struct("!HBBHHHH")
_TAIL = struct.Struct("!HH")
_DO = 0x8000  # in the OPT record's TTL field


def encode_name(name: bytes) -> bytes:
    """Uncompressed wire form of a dotted name; ValueError for empty or over-long labels."""
    out = bytearray()
    stripped = name.rstrip(b".")
    if stripped:
        for label in stripped.split(b"."):
            if not 0 < len(label) < 64:
                raise ValueError(f"bad label in {name!r}")
            out.append(len(label))
            out += label
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def client_bits(query: dns.Message) -> tuple[bool, bool, bool]:
    """The client's (RD, CD, DO) bits; DO comes from an OPT record in the additional section."""
    do = False
    for rr in query.additional:
        if rr.type == dns.OPT:
            flags = getattr(rr, "dnssecOK", None)
            do = bool(flags) if flags is not None else bool(rr.ttl & _DO)
            break
    return bool(query.recDes), bool(getattr(query, "checkingDisabled", 0)), do


def build_query(name: bytes, qtype: int, qclass: int, *, rd: bool, cd: bool, do: bool) -> bytes:
    """A query with ID 0 (patch it with :func:`with_id`), one question and an OPT record."""
    byte3 = 0x01 if rd else 0x00
    byte4 = 0x10 if cd else 0x00
    header = _HEADER.pack(0, byte3, byte4, 1, 0, 0, 1)
    question = encode_name(name) + _TAIL.pack(qtype, qclass)
    # OPT: root name, type 41, class = our UDP payload size, TTL = ext-rcode/version/DO, no options
    opt = b"\x00" + struct.pack("!HHIH", dns.OPT, EDNS_UDP_SIZE, _DO if do else 0, 0)
    return header + question + opt


def with_id(template: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + template[2:]


@dataclass(frozen=True, slots=True)
class Expect:
    """What a valid answer to one of our queries must echo: the question (case-insensitively)."""

    qname_wire: bytes  # lower-cased, uncompressed
    tail: bytes  # qtype, qclass

    @classmethod
    def for_question(cls, name: bytes, qtype: int, qclass: int) -> Expect:
        return cls(encode_name(name.lower()), _TAIL.pack(qtype, qclass))

    def matches(self, data: bytes, qid: int) -> bool:
        """True if ``data`` is a response with ID ``qid`` echoing our question.

        A response without a question section is accepted only with a non-zero RCODE (some
        servers send FORMERR/NOTIMP/REFUSED that way); a NOERROR answer must echo the question.
        """
        if len(data) < 12 or int.from_bytes(data[:2], "big") != qid or not data[2] & 0x80:
            return False
        qdcount = int.from_bytes(data[4:6], "big")
        if qdcount == 0:
            return data[3] & 0x0F != 0
        n = len(self.qname_wire)
        end = 12 + n
        return data[12:end].lower() == self.qname_wire and data[end : end + 4] == self.tail


def is_truncated(data: bytes) -> bool:
    return len(data) >= 3 and bool(data[2] & 0x02)


def decode_response(data: bytes) -> dns.Message:
    """Decode an upstream answer, dropping its OPT pseudo-record (EDNS is hop-by-hop).

    Raises ValueError when the bytes do not decode; a truncated tail is tolerated by Twisted's
    decoder (it keeps the records read so far).
    """
    m = dns.Message()
    try:
        m.fromStr(data)
    except Exception as e:  # struct.error, EOFError, ValueError, UnicodeError from odd records
        raise ValueError(f"undecodable response: {e}") from None
    if m.additional:
        m.additional = [rr for rr in m.additional if rr.type != dns.OPT]
    return m
