"""Bytes-level helpers for forwarding: build the upstream query, check and decode the answer.

The forwarder does not re-encode the client's message: a fresh query (our own random ID, the
client's question, RD, CD and AD bits, and an OPT record with our UDP size, the client's DO bit
and the client's EDNS options) is built once as a *template* with ID 0 (from the client's packet
by :mod:`kubedns.forward.relay`, or by :func:`build_query`), then the ID is patched per try.  Answers are checked on the raw bytes (ID, QR, question) before
anything is decoded, so spoofed or stale datagrams cost a few byte comparisons and are ignored.

EDNS options are relayed both ways as CoreDNS's *forward* does (it sends the client's message
as is): client subnet (ECS), NSID, padding, Extended DNS Errors and any option we do not know go
upstream, and the upstream's options and extended rcode come back.  Two options are per hop and
are not relayed in either direction:

* **COOKIE** (10, RFC 7873): a client cookie belongs to the client/server pair and a server
  cookie is computed from the address of the client the server saw, which for the upstream is
  us, not the Pod.  Relaying them (CoreDNS does) hands the client a server cookie it cannot
  use and puts the Pod's client cookie on a hop it never chose.  kubedns does not implement
  server cookies: the client sees a server that ignores the option (§5.2 of the RFC allows it)
  and the upstream sees a client without cookies.
* **edns-tcp-keepalive** (11, RFC 7828): it describes one TCP connection; ours to the upstream
  are managed by ``expire``.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from twisted.names import dns

from kubedns.explain import EXPLAIN_OPTION
from kubedns.forward.decode import decode_message

__all__ = [
    "EDNS_UDP_SIZE",
    "Expect",
    "EdnsOptions",
    "answer_options",
    "build_query",
    "client_bits",
    "client_edns",
    "decode_response",
    "encode_name",
    "option_data",
    "options_record",
    "relay_options",
    "is_truncated",
    "with_id",
]

EDNS_UDP_SIZE = 1232  # the DNS flag day 2020 value: no IP fragmentation on common paths
_HEADER = struct.Struct("!HBBHHHH")
_TAIL = struct.Struct("!HH")
_DO = 0x8000  # in the OPT record's TTL field
_OPTION = struct.Struct("!HH")  # option code, option length

ECS, COOKIE, TCP_KEEPALIVE = 8, 10, 11
#: Options that belong to one hop and are never relayed (see the module docstring), and kubedns
#: explain's, answered by this server only (kubedns.explain).
HOP_BY_HOP = frozenset((COOKIE, TCP_KEEPALIVE, EXPLAIN_OPTION))

EdnsOptions = bytes  # an OPT record's rdata: (code, length, data) triples back to back


def relay_options(rdata: bytes) -> EdnsOptions:
    """``rdata`` without the hop-by-hop options; b"" when it is malformed (nothing is relayed)."""
    if not rdata:
        return b""
    pos = 0
    n = len(rdata)
    kept: list[bytes] = []
    dropped = False
    while pos < n:
        if pos + 4 > n:
            return b""
        code, length = _OPTION.unpack_from(rdata, pos)
        end = pos + 4 + length
        if end > n:
            return b""
        if code in HOP_BY_HOP:
            dropped = True
        else:
            kept.append(rdata[pos:end])
        pos = end
    return b"".join(kept) if dropped else rdata


def option_data(rdata: EdnsOptions, code: int) -> bytes | None:
    """The data of the first option ``code`` in well-formed ``rdata`` (see :func:`relay_options`)."""
    pos = 0
    n = len(rdata)
    while pos + 4 <= n:
        c, length = _OPTION.unpack_from(rdata, pos)
        if c == code:
            return rdata[pos + 4 : pos + 4 + length]
        pos += 4 + length
    return None


def _opt_rdata(rr: dns.RRHeader) -> bytes:
    payload = rr.payload
    data = getattr(payload, "data", None)
    return data if isinstance(data, bytes) else b""


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
    rd, cd, do, _ad, _opts = client_edns(query)
    return rd, cd, do


def client_edns(query: dns.Message) -> tuple[bool, bool, bool, bool, EdnsOptions]:
    """The client's (RD, CD, DO, AD) bits and the EDNS options to relay (hop-by-hop ones dropped).

    The options are the rdata of the query's OPT record as the server decoded it (an
    ``UnknownRecord`` payload, as twisted.names decodes OPT), checked by :func:`relay_options`.
    """
    do = False
    opts = b""
    for rr in query.additional:
        if rr.type == dns.OPT:
            flags = getattr(rr, "dnssecOK", None)
            do = bool(flags) if flags is not None else bool(rr.ttl & _DO)
            opts = relay_options(_opt_rdata(rr))
            break
    return (bool(query.recDes), bool(getattr(query, "checkingDisabled", 0)), do,
            bool(getattr(query, "authenticData", 0)), opts)


def build_query(
    name: bytes, qtype: int, qclass: int, *, rd: bool, cd: bool, do: bool, ad: bool = False, options: bytes = b""
) -> bytes:
    """A query with ID 0 (patch it with :func:`with_id`), one question and an OPT record.

    ``options`` is the OPT rdata to send (the client's relayable options), ``ad`` the AD bit
    (RFC 6840 §5.7: the client understands AD; a validating upstream then sets it in answers).
    """
    byte3 = 0x01 if rd else 0x00
    byte4 = (0x10 if cd else 0x00) | (0x20 if ad else 0x00)
    header = _HEADER.pack(0, byte3, byte4, 1, 0, 0, 1)
    question = encode_name(name) + _TAIL.pack(qtype, qclass)
    # OPT: root name, type 41, class = our UDP payload size, TTL = ext-rcode/version/DO, options
    opt = b"\x00" + struct.pack("!HHIH", dns.OPT, EDNS_UDP_SIZE, _DO if do else 0, len(options)) + options
    return header + question + opt


def with_id(template: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + template[2:]


class Expect(NamedTuple):
    """What a valid answer to one of our queries must echo: the question (case-insensitively).

    A NamedTuple, not a frozen dataclass: one is made per forwarded miss, and a frozen
    dataclass's ``__init__`` costs several times more."""

    qname_wire: bytes  # lower-cased, uncompressed
    tail: bytes  # qtype, qclass

    @classmethod
    def for_question(cls, name: bytes, qtype: int, qclass: int) -> Expect:
        return cls(encode_name(name.lower()), _TAIL.pack(qtype, qclass))

    @classmethod
    def for_query(cls, query: bytes) -> Expect:
        """The question of a query from :func:`build_query` (its name is uncompressed at 12),
        without encoding the name again: label length bytes are below 64, so ``lower()`` leaves
        them be."""
        pos = 12
        while query[pos]:
            pos += query[pos] + 1
        return cls(query[12 : pos + 1].lower(), query[pos + 1 : pos + 5])

    def matches(self, data: bytes, qid: int) -> bool:
        """True if ``data`` is a response with ID ``qid`` echoing our question.

        A response without a question section is accepted only with a non-zero RCODE (some
        servers send FORMERR/NOTIMP/REFUSED that way); a NOERROR answer must echo the question.
        """
        if len(data) < 12 or data[0] != qid >> 8 or data[1] != qid & 0xFF or not data[2] & 0x80:
            return False
        if not data[4] and not data[5]:  # no question
            return data[3] & 0x0F != 0
        n = len(self.qname_wire)
        end = 12 + n
        return data[12:end].lower() == self.qname_wire and data[end : end + 4] == self.tail


def is_truncated(data: bytes) -> bool:
    return len(data) >= 3 and bool(data[2] & 0x02)


def decode_response(data: bytes) -> dns.Message:
    """Decode an upstream answer; its EDNS is folded in for relaying.

    The extended rcode (the OPT's upper 8 bits) is folded into ``rCode`` (so BADCOOKIE or an
    EDE-carrying code survives), and the OPT record is replaced by one holding only the options
    to relay back (:func:`answer_options` reads them), or dropped when there are none.  The
    answer's size on the wire is kept as ``wire_size`` (the cache's byte accounting).

    Raises ValueError when the bytes do not decode; a truncated tail is tolerated by Twisted's
    decoder (it keeps the records read so far).
    """
    try:
        m = decode_message(data)  # Message.fromStr's result, faster (kubedns.forward.decode)
    except Exception as e:  # struct.error, EOFError, ValueError, UnicodeError from odd records
        raise ValueError(f"undecodable response: {e}") from None
    m.wire_size = len(data)  # type: ignore[attr-defined]
    if m.additional:
        rest = []
        opt = None
        for rr in m.additional:
            if rr.type != dns.OPT:
                rest.append(rr)
            elif opt is None:
                opt = rr
        if opt is not None:
            m.rCode |= ((opt.ttl >> 24) & 0xFF) << 4
            opts = relay_options(_opt_rdata(opt))
            if opts:
                rest.append(options_record(opts))
        m.additional = rest
    return m


def options_record(options: EdnsOptions) -> dns.RRHeader:
    """An OPT pseudo-record carrying ``options`` (as twisted.names decodes one: raw rdata)."""
    return dns.RRHeader(b"", dns.OPT, cls=EDNS_UDP_SIZE, ttl=0, payload=dns.UnknownRecord(options))


def answer_options(msg: dns.Message) -> EdnsOptions:
    """The EDNS options an answer from :func:`decode_response` (or the cache) carries to relay."""
    for rr in msg.additional:
        if rr.type == dns.OPT:
            return _opt_rdata(rr)
    return b""
