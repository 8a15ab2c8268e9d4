"""The ``kubedns`` command (installed with the package): tools around the server, not the server.

``kubedns check FILE`` validates a Corefile or YAML config with the server's loader and prints the
effective configuration (:mod:`kubedns.check`); ``kubedns explain NAME`` replays a Pod's stub
resolver against a running server (:mod:`kubedns.explain`).  The server itself is still started
as ``twistd -n kubedns --config FILE``.  Exit codes: 0 done, 1 the config is invalid or the
lookup fails, 2 a bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _server(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` (port 53) as a socket address; IPs only, so the
    command never asks a resolver where to send its queries."""
    import ipaddress

    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address and port like 127.0.0.1:53, got {text!r}") from None
    return host, number


def _ndots(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 15:
        raise argparse.ArgumentTypeError(f"expected ndots from 0 to 15 (the resolvers' cap), got {text!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubedns", description="Tools for kubedns, the Kubernetes cluster DNS server "
                                "(the server runs as `twistd -n kubedns --config FILE`).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a Corefile or YAML config and print the effective configuration")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="the effective configuration as JSON")
    e = sub.add_parser("explain", help="the queries a Pod's stub resolver sends for NAME, and why it stops")
    e.add_argument("name")
    e.add_argument("--namespace", "-n", default="default", help="the Pod's namespace (default: default)")
    e.add_argument("--server", type=_server, default=("127.0.0.1", 53),
                   help="the DNS server to ask, HOST:PORT (default 127.0.0.1:53); nothing else is asked")
    e.add_argument("--cluster-domain", default="cluster.local", help="default: cluster.local")
    e.add_argument("--search", nargs="*", metavar="DOMAIN",
                   help="the search list (default: NS.svc.DOMAIN svc.DOMAIN DOMAIN, as the kubelet writes it; "
                        "--search alone: none, as dnsPolicy Default on a node without one)")
    e.add_argument("--ndots", type=_ndots, default=5, help="default 5, as the kubelet writes it")
    e.add_argument("--musl", action="store_true", help="musl's rules (Alpine) instead of glibc's")
    e.add_argument("--type", choices=("A", "AAAA", "both"), default="both",
                   help="what getaddrinfo asks: both (AF_UNSPEC, the default), A or AAAA")
    e.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each step's replies (default 2)")
    e.add_argument("--config", metavar="FILE",
                   help="the server's Corefile or YAML config: says whether its block has autopath")
    e.add_argument("--json", action="store_true", help="the walk as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    return _explain(args)


def _check(args: argparse.Namespace) -> int:
    from kubedns.check import render_json, render_text
    from kubedns.config import ConfigError, load

    try:
        config = load(args.file)
    except ConfigError as e:
        print(" ".join(str(e).split()), file=sys.stderr)
        return 1
    print(render_json(config) if args.json else render_text(config))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from kubedns.explain import alternatives, ask, memo, walk

    domain = args.cluster_domain.strip(".")
    search = tuple(args.search) if args.search is not None else (
        f"{args.namespace}.svc.{domain}", f"svc.{domain}", domain)
    qtypes = ("A", "AAAA") if args.type == "both" else (args.type,)
    name = args.name
    if not name.strip(".") or ".." in name or len(name.rstrip(".")) > 253:
        print(f"kubedns explain: {name!r} is not a host name", file=sys.stderr)
        return 2
    autopath = None
    if args.config is not None:
        from kubedns.config import ConfigError

        try:
            autopath = _has_autopath(args.config, f"{name.rstrip('.')}.{search[0]}" if search else name)
        except ConfigError as e:
            print(" ".join(str(e).split()), file=sys.stderr)
            return 2
    send = memo(ask(args.server, args.timeout))
    w = walk(name, search, args.ndots, send, musl=args.musl, qtypes=qtypes)
    hints = alternatives(w, send, qtypes=qtypes, autopath=autopath)
    data = _walk_data(w, args, hints)
    if all(r.rcode == "TIMEOUT" for s in w.steps for r in s.replies):
        host, port = args.server
        print(f"kubedns explain: no reply from {data['server']} within {args.timeout:g}s "
              "(is a DNS server listening there?)", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else _walk_text(data))
    return 0 if w.answered is not None else 1


def _has_autopath(path: str, first: str) -> bool:
    """Whether the block of the config at ``path`` that serves ``first`` (the longest zone holding
    it, as the server routes) has ``autopath``."""
    from kubedns.config import load

    lname = first.rstrip(".").lower()
    best, best_len = None, -1
    for b in load(path).servers:
        for z in b.zones:
            if (z == "" or lname == z or lname.endswith("." + z)) and len(z) > best_len:
                best, best_len = b, len(z)
    return best is not None and best.autopath is not None


def _walk_data(w: Any, args: argparse.Namespace, hints: list[str]) -> dict[str, Any]:
    host, port = args.server
    return {
        "name": w.name,
        "stub": w.stub,
        "server": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "namespace": args.namespace,
        "search": list(w.search),
        "ndots": w.ndots,
        "dots": w.name.count("."),
        "steps": [{
            "name": s.name, "why": s.why, "outcome": s.outcome, "goes_on": s.goes_on,
            "queries": [{"type": r.qtype, "rcode": r.rcode, "answers": list(r.answers), "ttl": r.ttl,
                         "plugin": r.plugin, "zone": r.zone, "ms": round(r.ms, 3), "tcp": r.tcp}
                        for r in s.replies],
        } for s in w.steps],
        "queries": w.queries,
        "answered": w.answered.name if w.answered is not None else None,
        "stop": w.stop,
        "would_change": hints,
    }


def _walk_text(d: dict[str, Any]) -> str:
    trailing = d["name"].endswith(".")
    if trailing:
        rule = "a trailing dot: the name as is, once"
    elif d["dots"] >= d["ndots"]:
        rule = (f"{d['dots']} dot(s) >= ndots:{d['ndots']}: the name as is first"
                + (", then no search list (musl)" if d["stub"] == "musl" else ", then the search list"))
    else:
        rule = f"{d['dots']} dot(s) < ndots:{d['ndots']}: the search list first, then the name as is"
    lines = [
        f"{d['name']} from a Pod in namespace {d['namespace']} ({d['stub']} stub), asking {d['server']}",
        f"  search {' '.join(d['search']) or '(none)'}",
        f"  options ndots:{d['ndots']}",
        f"  {rule}",
        "",
    ]
    rows = [("#", "query", "type", "rcode", "plugin", "ttl", "time", "answer")]
    n = 0
    for s in d["steps"]:
        for q in s["queries"]:
            n += 1
            plugin = q["plugin"] if q["plugin"] is not None else "?"
            answer = "; ".join(a.split(" ", 2)[2] for a in q["answers"]) or "-"
            rows.append((str(n), s["name"], q["type"] + ("/tcp" if q["tcp"] else ""), q["rcode"], plugin or "(none)",
                         "-" if q["ttl"] is None else str(q["ttl"]), f"{q['ms']:.1f}ms", answer))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    lines.append("")
    lines.append(f"{d['queries']} queries in {len(d['steps'])} step(s); stops at {d['stop']}")
    if any(q["plugin"] is None for s in d["steps"] for q in s["queries"]):
        lines.append("  (plugin ?: the server did not say; kubedns tells clients on loopback, or any client "
                     "in a block with `debug`)")
    if d["would_change"]:
        lines.append("What would change it:")
        lines.extend(f"  - {h}" for h in d["would_change"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
