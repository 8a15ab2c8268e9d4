"""kubedns.forward.decode gives exactly what Twisted's ``Message.fromStr`` gives, or its error.

Answers built with dnspython (A, AAAA, CNAME chains, MX with additional records, TXT, SRV, PTR,
an unknown type, NXDOMAIN with SOA, with and without EDNS and options), every truncation of
each, and a few hundred single-byte corruptions each, are decoded both ways and compared
field by field (header, question, every record's owner, type, class, TTL and payload), or by the
exception's type.  A compression loop is refused as Twisted refuses it.  Also: the question an
answer must echo, read from our query's bytes, is the one encoded from the name.
"""

from __future__ import annotations

import random
from typing import Any

import dns.edns
import dns.message
import dns.rrset
import pytest
from twisted.names import dns as tdns

from kubedns.forward.decode import decode_message


def _twisted(data: bytes) -> tdns.Message:
    m = tdns.Message()
    m.fromStr(data)
    return m


def _fields(m: tdns.Message) -> Any:
    header = (m.maxSize, m.id, m.answer, m.opCode, m.auth, m.trunc, m.recDes, m.recAv, m.rCode,
              m.authenticData, m.checkingDisabled)
    questions = [(q.name.name, q.type, q.cls) for q in m.queries]
    sections = [[(rr.name.name, rr.type, rr.cls, rr.ttl, rr.auth, type(rr.payload).__name__, rr.payload.__dict__)
                 for rr in sec] for sec in (m.answers, m.authority, m.additional)]
    return header, questions, sections


def _outcome(decode: Any, data: bytes) -> Any:
    try:
        return "ok", _fields(decode(data))
    except Exception as e:
        return "error", type(e).__name__


def _answer(name: str, answers: list[tuple], rcode: int = 0, authority: tuple = (), additional: tuple = (),
            edns: bool = True, options: tuple = ()) -> bytes:
    q = dns.message.make_query(name, "A", use_edns=0 if edns else None, options=list(options))
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for section, rrs in ((r.answer, answers), (r.authority, authority), (r.additional, additional)):
        for t in rrs:
            section.append(dns.rrset.from_text(*t))
    return r.to_wire()


ANSWERS = {
    "a": _answer("a.example.", [("a.example.", 300, "IN", "A", "192.0.2.1", "192.0.2.2")]),
    "cname-chain": _answer("a.example.", [("a.example.", 300, "IN", "CNAME", "b.example."),
                                           ("b.example.", 60, "IN", "CNAME", "c.cdn.example."),
                                           ("c.cdn.example.", 20, "IN", "A", "192.0.2.3")]),
    "nxdomain-soa": _answer("nx.example.", [], 3,
                            authority=(("example.", 900, "IN", "SOA", "ns.example. host.example. 1 2 3 4 5"),)),
    "mx-txt-aaaa": _answer("a.example.", [("a.example.", 300, "IN", "MX", "10 mail.a.example."),
                                          ("a.example.", 30, "IN", "TXT", '"hello" "world"'),
                                          ("a.example.", 30, "IN", "AAAA", "2001:db8::1")],
                           additional=(("mail.a.example.", 30, "IN", "A", "192.0.2.9"),)),
    "srv-ecs": _answer("_x._tcp.a.example.", [("_x._tcp.a.example.", 5, "IN", "SRV", "0 10 80 web.a.example.")],
                       options=(dns.edns.ECSOption("192.0.2.0", 24),)),
    "no-edns": _answer("a.example.", [("a.example.", 300, "IN", "A", "192.0.2.1")], edns=False),
    "unknown-type": _answer("a.example.", [("a.example.", 300, "IN", "TYPE65534", r"\# 3 010203")]),
    "ptr": _answer("a.example.", [("a.example.", 300, "IN", "PTR", "x.y.")]),
}


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_same_result_as_twisted_whole_truncated_and_corrupted(kind: str) -> None:
    data = ANSWERS[kind]
    assert _outcome(decode_message, data)[0] == "ok"
    rng = random.Random(kind)
    cases = [data] + [data[:n] for n in range(len(data))]
    for _ in range(300):
        b = bytearray(data)
        b[rng.randrange(len(b))] = rng.randrange(256)
        cases.append(bytes(b))
    for c in cases:
        assert _outcome(decode_message, c) == _outcome(_twisted, c), c.hex()


def test_a_compression_loop_is_refused_as_twisted_refuses_it() -> None:
    data = bytearray(ANSWERS["a"])
    pos = 12 + len(b"\x01a\x07example\x00") + 4  # the first answer's owner name, after the question
    assert data[pos:pos + 2] == b"\xc0\x0c"
    data[pos:pos + 2] = bytes([0xC0, pos])  # a pointer to itself
    assert _outcome(decode_message, bytes(data)) == _outcome(_twisted, bytes(data)) == ("error", "ValueError")


@pytest.mark.parametrize("name", [b"Example.COM", b"", b"a.b.c.d.e", b"x" * 63 + b".y"])
def test_the_question_expected_back_read_from_the_query_equals_the_encoded_one(name: bytes) -> None:
    from kubedns.forward.message import Expect, build_query

    query = build_query(name, tdns.AAAA, tdns.IN, rd=True, cd=False, do=True, options=b"\x00\x08\x00\x02ab")
    assert Expect.for_query(query) == Expect.for_question(name, tdns.AAAA, tdns.IN)
