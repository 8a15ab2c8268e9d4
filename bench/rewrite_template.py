"""CPU per query of ``rewrite`` and ``template`` on the slow path, one plugin call at a time.

    python bench/rewrite_template.py [--number 20000]

Why: both plugins run before the cluster and forward on every query of their block that the fast
path does not answer (a first query, TCP, a new spelling); what a rule that does not match costs
is paid by every such query.  Setting: the README's example rules (an exact rewrite, a suffix
rewrite with ``answer auto``, AAAA NODATA, the search-path NXDOMAIN template with its SOA) in
front of a ``next`` that answers at once, timed with ``timeit`` in this process.  Nothing is sent
anywhere.
"""

from __future__ import annotations

import argparse
import timeit

import dns.message

from kubedns.configbase import Node
from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.dns.wire import parse_question
from kubedns.plugins.base import Reply
from kubedns.plugins.rewrite import RewritePlugin, parse_rewrite_config
from kubedns.plugins.template import TemplatePlugin, parse_template_config

SEARCH_NX = {
    "class": "ANY", "type": "ANY", "zones": ["cluster.local"],
    "match": ["^(?:[^.]+\\.)+(?:com|net|org|io)\\.(?:[^.]+\\.svc\\.|svc\\.)?cluster\\.local\\.$"],
    "rcode": "NXDOMAIN", "fallthrough": True,
    "authority": ["{{ .Zone }} 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. (1 7200 1800 86400 30)"],
}


def _request(name: str, rdtype: str = "A") -> Request:
    data = dns.message.make_query(name, rdtype, use_edns=False).to_wire()
    q = parse_question(data)
    assert q is not None
    return Request(q, data[12 : q.end], None, 512, "udp", ("10.0.0.1", 1), 0.0, data, None,
                   lname=q.qname.decode().lower())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()
    reply = Reply(Answer(), "", "next")
    rewrite = RewritePlugin(parse_rewrite_config(Node([
        "name db.example.com postgres.prod.svc.cluster.local",
        "name suffix .svc.corp.example. .svc.cluster.local. answer auto"], "bench", "rewrite")))
    template = TemplatePlugin(parse_template_config(Node([
        {"class": "IN", "type": "AAAA", "rcode": "NOERROR"}, SEARCH_NX], "bench", "template")), ("",))
    cases = [
        ("rewrite, no rule matches", rewrite, _request("nginx.default.svc.cluster.local")),
        ("rewrite, exact rule", rewrite, _request("db.example.com")),
        ("rewrite, suffix answer auto", rewrite, _request("nginx.default.svc.corp.example")),
        ("template, falls through", template, _request("nginx.default.svc.cluster.local")),
        ("template, AAAA NODATA", template, _request("google.com", "AAAA")),
        ("template, NXDOMAIN + SOA", template, _request("google.com.default.svc.cluster.local")),
    ]
    for label, plugin, req in cases:
        t = timeit.timeit(lambda p=plugin, r=req: p.serve(r, lambda _: reply), number=args.number)
        print(f"{label:32} {t / args.number * 1e6:7.1f} µs/query")


if __name__ == "__main__":
    main()
