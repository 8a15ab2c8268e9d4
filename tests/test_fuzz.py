"""Property-based fuzzing (hypothesis) of what reads client bytes: the query walker, the fast
path and the TCP framing.

A small, derandomized budget so CI stays fast (a few seconds) and stable; ``bench/fuzz.py``
throws a million mutated packets at a running server for the long run.  Inputs are valid
queries built with dnspython (any case, type, flags, EDNS size, version and options), the same
queries mutated (bit flips, truncation, inserted bytes, forged section counts, junk appended)
and plain random bytes.  The properties:

- the walker (``kubedns.dns.wire``) never raises: a malformed packet is None, never an exception,
  and what it reads from a valid query is what dnspython reads;
- every answer, from the slow path or the fast path, is a well-formed DNS message (dnspython
  parses it) with the query's ID and, when the query has a readable question, that question
  exactly as sent; over UDP it fits the client's size; a response is never answered; a query
  dnspython cannot read as one question gets FORMERR, NOTIMP or nothing; asked twice (the
  second time from the fast path if it was kept) the answer is the same bytes;
- TCP framing gives the same answers, in order, however the stream is split, skips what gets
  no answer, stops at a frame too short to be DNS, and waits for the rest of a truncated frame.
"""

from __future__ import annotations

import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from kubedns.dns import wire
from kubedns.serve.protocols import DNSStreamFactory
from tests.support.dispatch import udp_dispatcher
from tests.support.records_table import TABLE

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAMES = sorted({qname for qname, _, _, _ in TABLE} | {"example.com", "cluster.local", "a.b.c.d.svc.cluster.local"})
TYPES = [1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 65, 252, 255, 65535]


@st.composite
def queries(draw: Any) -> bytes:
    """A valid query: a served name in random case, any type, random flags, maybe EDNS."""
    name = draw(st.sampled_from(NAMES))
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name) if draw(st.booleans()) else name
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        opts = [dns.edns.GenericOption(draw(st.integers(1, 65535)), draw(st.binary(max_size=40)))
                for _ in range(draw(st.integers(0, 2)))]
        kw = {"use_edns": draw(st.sampled_from([0, 0, 0, 1, 255])), "payload": draw(st.integers(0, 65535)),
              "ednsflags": dns.flags.DO if draw(st.booleans()) else 0, "options": opts}
    q = dns.message.make_query(name, draw(st.sampled_from(TYPES)), **kw)
    q.id = draw(st.integers(0, 65535))
    q.flags = draw(st.sampled_from([0, dns.flags.RD, dns.flags.RD | dns.flags.CD, dns.flags.AD]))
    return q.to_wire()


@st.composite
def mutated(draw: Any) -> bytes:
    """A valid query, then one to three mutations."""
    data = bytearray(draw(queries()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "counts", "append"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "counts" and len(data) >= 12:
            i = draw(st.sampled_from([4, 6, 8, 10]))
            data[i : i + 2] = struct.pack("!H", draw(st.sampled_from([0, 1, 2, 3, 255, 65535])))
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


packets = st.one_of(queries(), mutated(), mutated(), st.binary(max_size=300))


# -- the walker ----------------------------------------------------------------------------

@FUZZ
@given(packets)
def test_walker_never_raises_and_stays_in_bounds(data: bytes) -> None:
    q = wire.parse_question(data)
    if q is None:
        return
    assert 12 <= q.end <= len(data) and q.qdcount >= 0
    if q.qdcount:
        assert len(q.qname_wire) <= 255 and data[12 : q.end - 4] == q.qname_wire
    for read in (wire.read_edns_raw, wire.scan_query_records):
        got = read(data, q)
        assert got is None or (isinstance(got, tuple) and isinstance(got[1], bool))
    for pos in range(12, min(len(data), 40)):
        end = wire.scan_name(data, pos)
        assert end is None or pos < end <= len(data)
    err = wire.error_response(data, dns.rcode.FORMERR)
    assert err is None or dns.message.from_wire(err).id == q.id


@FUZZ
@given(queries())
def test_walker_reads_a_valid_query_as_dnspython_does(data: bytes) -> None:
    ref = dns.message.from_wire(data)
    q = wire.parse_question(data)
    assert q is not None and q.id == ref.id and q.qdcount == 1
    assert q.qname.decode() + "." == ref.question[0].name.to_text()  # case kept
    assert (q.qtype, q.qclass) == (ref.question[0].rdtype, ref.question[0].rdclass)
    got = wire.read_edns_raw(data, q) or wire.scan_query_records(data, q)
    assert got is not None and got[1]
    edns = got[0]
    if ref.edns < 0:
        assert edns is None
    else:
        assert edns is not None and (edns.version, edns.do) == (ref.edns, bool(ref.ednsflags & dns.flags.DO))
        assert edns.udp_size == max(512, ref.payload)


# -- the whole query path, UDP (fast path included) ----------------------------------------

_WORLD: dict[str, Any] = {}


def _world() -> tuple[Any, Any, Any]:
    """One Dispatcher over a filled store (its reactor a task.Clock), its UDP protocol and the
    socket that captures what it sends, shared by every example as a server shares them."""
    if "disp" not in _WORLD:
        disp, proto, tr, _ = udp_dispatcher()
        _WORLD.update(disp=disp, proto=proto, tr=tr)
    return _WORLD["disp"], _WORLD["proto"], _WORLD["tr"]


@pytest.fixture(scope="module", autouse=True)
def _catch_logged_errors():
    """The dispatcher logs an unexpected exception and answers SERVFAIL: catch those logs."""
    errors: list[dict] = []

    def observer(event: dict) -> None:
        level = event.get("log_level")
        if event.get("log_failure") is not None or (level is not None and level.name in ("error", "critical")):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    _WORLD["logged"] = errors
    yield
    globalLogPublisher.removeObserver(observer)


def _question_of(data: bytes) -> dns.message.Message | None:
    """The query as dnspython reads it, if it is one query with one question."""
    try:
        m = dns.message.from_wire(data)
    except Exception:  # the reference decoder rejects it (any of its many errors)
        return None
    if m.flags & dns.flags.QR or m.opcode() != dns.opcode.QUERY or len(m.question) != 1:
        return None
    return m


def check_answer(query: bytes, answer: bytes | None, limit: int | None) -> None:
    """The properties every answer to ``query`` must have (see the module docstring)."""
    if len(query) < 12 or query[2] & 0x80:
        assert answer is None, "a response or a runt was answered"
        return
    if answer is None:
        return  # dropping is allowed; a crash is not (the log observer catches those)
    assert answer[:2] == query[:2] and answer[2] & 0x80, "not a response with the query's ID"
    if limit is not None:
        assert len(answer) <= limit
    # opcode QUERY for the parse: dnspython reads an UPDATE's question with UPDATE's rules (one
    # SOA) and would reject a NOTIMP echoing a malformed UPDATE's question, as CoreDNS answers
    msg = dns.message.from_wire(answer[:2] + bytes([answer[2] & 0x87]) + answer[3:], raise_on_truncation=False)
    q = wire.parse_question(query)
    if msg.question:  # it carries a question: the query's, exactly as sent
        assert q is not None and q.qdcount >= 1 and answer[12 : q.end] == query[12 : q.end]
    if _question_of(query) is None and (q is None or q.qdcount != 1):
        assert msg.rcode() in (dns.rcode.FORMERR, dns.rcode.NOTIMP), msg.to_text()


def _udp(data: bytes) -> bytes | None:
    disp, proto, tr = _world()
    before = len(tr.socket.sent)
    proto.datagramReceived(data, ("127.0.0.1", 5353))
    sent = tr.socket.sent[before:]
    assert len(sent) <= 1
    return sent[0][0] if sent else None


def _limit(data: bytes) -> int:
    q = wire.parse_question(data)
    edns = None
    if q is not None:
        got = wire.read_edns_raw(data, q) or wire.scan_query_records(data, q)
        edns = got[0] if got else None
    return wire.udp_limit(edns)


@FUZZ
@given(packets)
def test_any_udp_answer_is_well_formed_and_stable(data: bytes) -> None:
    first = _udp(data)
    check_answer(data, first, _limit(data))
    again = _udp(data)  # from the fast path if the first answer was kept there
    assert again == first
    assert not _WORLD["logged"], _WORLD["logged"][:1]


# -- TCP framing ---------------------------------------------------------------------------

def _expected(frames: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(frame, answer) a connection must send for these frames, computed without the framing."""
    disp, _, _ = _world()
    out = []
    for f in frames:
        r = disp.handle(f, "tcp", ("127.0.0.1", 5353))
        if r is None:
            if len(f) < 12:
                break  # not DNS: the server hangs up
            continue
        assert isinstance(r, bytes)  # cluster answers are synchronous
        out.append((f, r))
    return out


def _frames_of(stream: bytes) -> list[bytes]:
    out = []
    while len(stream) >= 2:
        (n,) = struct.unpack_from("!H", stream)
        assert len(stream) >= 2 + n, "a partial frame was written"
        out.append(stream[2 : 2 + n])
        stream = stream[2 + n :]
    assert not stream
    return out


@FUZZ
@given(st.lists(packets, min_size=1, max_size=40), st.lists(st.integers(0, 4000), max_size=12),
       st.one_of(st.none(), st.tuples(st.integers(1, 65535), st.binary(max_size=50))))
def test_tcp_framing_is_split_invariant(frames: list[bytes], cuts: list[int], tail: tuple[int, bytes] | None) -> None:
    disp, _, _ = _world()
    clock = disp.reactor  # a task.Clock: batches left for the next turn run on advance(0)
    proto = DNSStreamFactory(disp, idle_timeout=10).buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    stream = b"".join(struct.pack("!H", len(f)) + f for f in frames)
    if tail is not None:  # a length prefix promising more than follows: wait for it, quietly
        n, body = tail
        stream += struct.pack("!H", n) + body[: n - 1]
    pos = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        if not tr.disconnecting:
            proto.dataReceived(stream[pos:cut])
        pos = max(pos, cut)
        for _ in range(len(frames)):
            clock.advance(0)
    want = _expected(frames)
    assert _frames_of(tr.value()) == [a for _, a in want]
    for f, a in want:
        check_answer(f, a, None)
    proto.connectionLost(None)
    assert not clock.getDelayedCalls()  # nothing left behind by a closed connection
    assert not _WORLD["logged"], _WORLD["logged"][:1]
