"""Each Corefile plugin's directive and options → the YAML config's key for it.

One function per plugin, sharing :class:`Block` (the keys made so far and, for each key path,
the ``file:line`` it came from).  An option with no special syntax maps by name (no argument →
``true``, one → its value, several → a list), so an option CoreDNS has and kubedns lacks reaches
the validation under its own name and is refused there, naming it.  :mod:`.mapping` puts the
blocks together and translates the validation's errors back.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from kubedns.corefile.lexer import CorefileSyntaxError, Token
from kubedns.corefile.parser import Directive, ServerBlockSyntax
from kubedns.corefile.policies import POLICY_MAPPERS
from kubedns.corefile.rewrite_template import map_rewrite, map_template

__all__ = ["MAPPERS", "Block", "Where", "err", "norm", "zone_names"]

_COMMON_FORMAT = '{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" {rcode} {>rflags} {rsize} {duration}'
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Where:
    file: str
    line: int
    label: str  # "kubernetes: ttl", "forward", "server block .:53"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def err(tok: Token, label: str, expected: str) -> CorefileSyntaxError:
    return CorefileSyntaxError(tok.file, tok.line, f"{label}: expected {expected}")


def _scalar(tok: Token) -> Any:
    """An argument as the YAML would hold it: whole numbers as ints, everything else as text."""
    t = tok.text
    if not tok.quoted and t.isascii() and t.isdigit():
        return int(t)
    return t


def _duration(tok: Token) -> Any:
    """Go durations with several units (``1m30s``) as seconds; one unit stays text (``"5s"``),
    which the config reads, so that an error shows what was written."""
    t = tok.text
    if _GO_DURATION.fullmatch(t) and len(_GO_PART.findall(t)) > 1:
        return sum(float(n) * _GO_UNITS[u] for n, u in _GO_PART.findall(t))
    return _scalar(tok)


def zone_names(tok: Token, label: str) -> list[str]:
    """A zone as CoreDNS writes it: a name, or a CIDR (``10.0.0.0/8``) for its reverse zones."""
    text = tok.text
    if "/" in text and text[:1].isdigit() or text.count(":") > 1 and "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise err(tok, label, f"a zone name or a CIDR like 10.0.0.0/8, got {text!r}") from None
        step = 8 if net.version == 4 else 4
        prefix = -(-net.prefixlen // step) * step  # up to the next label boundary
        # at most 2**7 zones (a /1 to /8 labels): CoreDNS splits a CIDR off a label boundary too
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = (
            [net] if prefix == net.prefixlen else list(net.subnets(new_prefix=prefix)))
        out = []
        for n in nets:
            labels = n.network_address.reverse_pointer.split(".")
            drop = (32 - n.prefixlen) // 8 if n.version == 4 else (128 - n.prefixlen) // 4
            out.append(".".join(labels[drop:]))
        return out
    return [text]


def norm(zone: str) -> str:
    """Lower case, no trailing dot; the root is "." (as the YAML writes it)."""
    return zone.lower().rstrip(".") or "."


class Block:
    """One Corefile server block being mapped: its plugin keys and where each came from."""

    def __init__(self, syntax: ServerBlockSyntax, zones: list[str]):
        self.syntax = syntax
        self.zones = zones
        self.data: dict[str, Any] = {}
        self.table: dict[str, Where] = {}
        self.binds: list[tuple[str, Token]] = []
        self.seen: dict[str, Directive] = {}

    def note(self, key: str, tok: Token, label: str) -> None:
        self.table[key] = Where(tok.file, tok.line, label)


def _options(b: Block, d: Directive, plugin: str, out: dict[str, Any], special: dict[str, Any] | None = None,
             repeatable: tuple[str, ...] = ()) -> None:
    """The lines of a plugin's block as keys of ``out``: no argument → true, one → its value,
    several → a list; ``special`` maps option names to functions doing more."""
    first: dict[str, Directive] = {}
    for opt in d.block or ():
        name = opt.text
        if name in first and name not in repeatable:
            raise err(opt.name, f"{plugin}: {name}", f"the option once (first at {first[name].where()})")
        first.setdefault(name, opt)
        fn = (special or {}).get(name)
        if fn is not None:
            fn(opt)
            continue
        if opt.block is not None:
            raise err(opt.name, f"{plugin}: {name}", "no block after this option")
        key = f"{plugin}.{name}"
        b.note(key, opt.name, f"{plugin}: {name}")
        if not opt.args:
            out[name] = True
        elif len(opt.args) == 1:
            out[name] = _duration(opt.args[0])
        else:
            out[name] = [_scalar(a) for a in opt.args]
            for i, a in enumerate(opt.args):
                b.note(f"{key}[{i}]", a, f"{plugin}: {name}")


def _no_args(d: Directive, what: str = "no arguments") -> None:
    if d.args:
        raise err(d.args[0], d.text, f"{what}, got {' '.join(a.text for a in d.args)!r}")


def _no_block(d: Directive) -> None:
    if d.block is not None:
        raise err(d.name, d.text, "no block ({ ... }) after this plugin")


def _zones_arg(b: Block, toks: list[Token], label: str) -> list[str]:
    out: list[str] = []
    for t in toks:
        out.extend(norm(z) for z in zone_names(t, label))
    return out


def _covers_block(b: Block, zones: list[str]) -> bool:
    """Whether ``zones`` include every zone of the block (as ``.`` does): nothing is left out."""
    return all(any(z == "." or bz == z or bz.endswith("." + z) for z in zones) for bz in b.zones)


# -- the plugins ---------------------------------------------------------------------------------


def _map_bind(b: Block, d: Directive) -> None:
    if not d.args:
        raise err(d.name, "bind", "one or more IP addresses to listen on")
    if d.block is not None:
        raise err(d.name, "bind", "no block: 'except' is not supported (list the addresses to listen on)")
    for a in d.args:
        try:
            ip = ipaddress.ip_address(a.text.split("%", 1)[0])
        except ValueError:
            raise err(a, "bind", f"an IP address (interface names are not supported), got {a.text!r}") from None
        b.binds.append((str(ip), a))


def _map_errors(b: Block, d: Directive) -> None:
    _no_args(d)
    out: dict[str, Any] = {}
    b.note("errors", d.name, "errors")

    def consolidate(opt: Directive) -> None:
        # CoreDNS's DURATION REGEXP [LEVEL] [show_first]; kubedns.ops.logconfig checks the values
        if not 2 <= len(opt.args) <= 4:
            raise err(opt.name, "errors: consolidate", "DURATION REGEXP [LEVEL] [show_first]")
        rule: dict[str, Any] = {"duration": _duration(opt.args[0]), "regexp": opt.args[1].text}
        rest = opt.args[2:]
        if rest and rest[-1].text == "show_first":
            rule["show_first"] = True
            rest = rest[:-1]
        if len(rest) > 1:
            raise err(rest[1], "errors: consolidate", f"LEVEL before show_first, got {rest[1].text!r}")
        if rest:
            rule["level"] = rest[0].text
        rules = out.setdefault("consolidate", [])
        key = f"errors.consolidate[{len(rules)}]"
        rules.append(rule)
        b.note("errors.consolidate", opt.name, "errors: consolidate")
        b.note(key, opt.name, "errors: consolidate")
        for part, tok in zip(("duration", "regexp", "level"), (opt.args[0], opt.args[1], *rest), strict=False):
            b.note(f"{key}.{part}", tok, "errors: consolidate")

    _options(b, d, "errors", out, {"consolidate": consolidate}, repeatable=("consolidate",))
    b.data["errors"] = out


def _map_health(b: Block, d: Directive) -> None:
    if len(d.args) > 1:
        raise err(d.args[1], "health", "at most one ADDRESS")
    out: dict[str, Any] = {"listen": d.args[0].text if d.args else ":8080"}
    b.note("health", d.name, "health")
    b.note("health.listen", d.args[0] if d.args else d.name, "health")
    _options(b, d, "health", out)
    b.data["health"] = out


def _map_address(default: str) -> Any:
    def fn(b: Block, d: Directive) -> None:
        if len(d.args) > 1:
            raise err(d.args[1], d.text, "at most one ADDRESS")
        _no_block(d)
        b.note(d.text, d.args[0] if d.args else d.name, d.text)
        b.data[d.text] = d.args[0].text if d.args else default
    return fn


def _map_kubernetes(b: Block, d: Directive) -> None:
    zones = _zones_arg(b, d.args, "kubernetes") if d.args else list(b.zones)
    out: dict[str, Any] = {"zones": zones}
    b.note("kubernetes", d.name, "kubernetes")
    for i, a in enumerate(d.args):
        b.note(f"kubernetes.zones[{i}]", a, "kubernetes")
    b.note("kubernetes.zones", d.name, "kubernetes")

    def fallthrough(opt: Directive) -> None:
        b.note("kubernetes.fallthrough", opt.name, "kubernetes: fallthrough")
        out["fallthrough"] = _zones_arg(b, opt.args, "kubernetes: fallthrough") if opt.args else True

    def kubeconfig(opt: Directive) -> None:
        if not 1 <= len(opt.args) <= 2:
            raise err(opt.name, "kubernetes: kubeconfig", "KUBECONFIG [CONTEXT]")
        out["kubeconfig"] = opt.args[0].text
        b.note("kubernetes.kubeconfig", opt.args[0], "kubernetes: kubeconfig")
        if len(opt.args) == 2:
            out["context"] = opt.args[1].text
            b.note("kubernetes.context", opt.args[1], "kubernetes: kubeconfig CONTEXT")

    def tls(opt: Directive) -> None:
        if len(opt.args) != 3:
            raise err(opt.name, "kubernetes: tls", "CERT KEY CACERT")
        out["tls"] = {"cert": opt.args[0].text, "key": opt.args[1].text, "cacert": opt.args[2].text}
        b.note("kubernetes.tls", opt.name, "kubernetes: tls")

    def ignore(opt: Directive) -> None:
        if [a.text for a in opt.args] != ["empty_service"]:
            raise err(opt.name, "kubernetes: ignore", "'ignore empty_service'")
        out["ignore_empty_service"] = True
        b.note("kubernetes.ignore_empty_service", opt.name, "kubernetes: ignore empty_service")

    def listing(key: str) -> Any:
        def fn(opt: Directive) -> None:
            if not opt.args:
                raise err(opt.name, f"kubernetes: {key}", "one or more values")
            out[key] = [a.text for a in opt.args]
            b.note(f"kubernetes.{key}", opt.name, f"kubernetes: {key}")
            for i, a in enumerate(opt.args):
                b.note(f"kubernetes.{key}[{i}]", a, f"kubernetes: {key}")
        return fn

    def labels(opt: Directive) -> None:
        if not opt.args:
            raise err(opt.name, "kubernetes: labels", "a label selector such as 'app=dns'")
        out["labels"] = " ".join(a.text for a in opt.args)
        b.note("kubernetes.labels", opt.name, "kubernetes: labels")

    _options(b, d, "kubernetes", out, {
        "fallthrough": fallthrough, "kubeconfig": kubeconfig, "tls": tls, "ignore": ignore,
        "endpoint": listing("endpoint"), "namespaces": listing("namespaces"), "labels": labels,
    })
    b.data["kubernetes"] = out


def _map_forward(b: Block, d: Directive) -> None:
    if len(d.args) < 2:
        raise err(d.name, "forward", "FROM TO... (a zone, then one or more upstreams)")
    frm = d.args[0]
    zones = _zones_arg(b, [frm], "forward")
    if not _covers_block(b, zones):
        raise err(frm, "forward", f"FROM '.' or the server block's zone (forwarding part of a block is not "
                   f"supported; give it a server block of its own), got {frm.text!r}")
    to: list[str] = []
    b.note("forward", d.name, "forward")
    b.note("forward.to", d.args[1], "forward")
    for i, a in enumerate(d.args[1:]):
        t = a.text
        to.append(t[6:] if t.lower().startswith("dns://") else t)
        b.note(f"forward.to[{i}]", a, "forward")
    out: dict[str, Any] = {"to": to}

    def tls(opt: Directive) -> None:
        if len(opt.args) == 1:
            out["tls_ca"] = opt.args[0].text
            b.note("forward.tls_ca", opt.args[0], "forward: tls")
        elif opt.args:
            raise err(opt.name, "forward: tls", "'tls' or 'tls CA' (client certificates, tls CERT KEY [CA], "
                       "are not supported)")

    def health_check(opt: Directive) -> None:
        if len(opt.args) != 1:
            bad = opt.args[1] if len(opt.args) > 1 else opt.name
            raise err(bad, "forward: health_check", "DURATION alone (no_rec and domain are not supported)")
        out["health_check"] = _duration(opt.args[0])
        b.note("forward.health_check", opt.args[0], "forward: health_check")

    def except_(opt: Directive) -> None:
        out["except"] = _zones_arg(b, opt.args, "forward: except")
        b.note("forward.except", opt.name, "forward: except")
        for i, a in enumerate(opt.args):
            b.note(f"forward.except[{i}]", a, "forward: except")

    _options(b, d, "forward", out, {"tls": tls, "health_check": health_check, "except": except_})
    b.data["forward"] = out


def _map_cache(b: Block, d: Directive) -> None:
    out: dict[str, Any] = {}
    b.note("cache", d.name, "cache")
    args = list(d.args)
    if args and args[0].text.isascii() and args[0].text.isdigit():
        out["ttl"] = _scalar(args[0])
        b.note("cache.ttl", args[0], "cache: TTL")
        args = args[1:]
    if args:
        zones = _zones_arg(b, args, "cache")
        if not _covers_block(b, zones):
            out["zones"] = zones  # refused by the validation: caching part of a block only
            b.note("cache.zones", args[0], "cache: ZONES")

    def capacity(kind: str) -> Any:
        def fn(opt: Directive) -> None:
            if not 1 <= len(opt.args) <= 3:
                raise err(opt.name, f"cache: {kind}", "CAPACITY [TTL [MINTTL]]")
            sub: dict[str, Any] = {}
            for key, a in zip(("capacity", "ttl", "min_ttl"), opt.args, strict=False):
                sub[key] = _scalar(a)
                b.note(f"cache.{kind}.{key}", a, f"cache: {kind}")
            out[kind] = sub
            b.note(f"cache.{kind}", opt.name, f"cache: {kind}")
        return fn

    def prefetch(opt: Directive) -> None:
        if not 1 <= len(opt.args) <= 3:
            raise err(opt.name, "cache: prefetch", "AMOUNT [[DURATION] [PERCENTAGE%]]")
        sub: dict[str, Any] = {"amount": _scalar(opt.args[0])}
        for a in opt.args[1:]:
            key = "percentage" if a.text.endswith("%") else "duration"
            sub[key] = _duration(a)
            b.note(f"cache.prefetch.{key}", a, "cache: prefetch")
        b.note("cache.prefetch", opt.name, "cache: prefetch")
        b.note("cache.prefetch.amount", opt.args[0], "cache: prefetch")
        out["prefetch"] = sub

    def serve_stale(opt: Directive) -> None:
        if len(opt.args) > 2:
            raise err(opt.args[2], "cache: serve_stale", "[DURATION [REFRESH_MODE]]")
        # CoreDNS's defaults: an hour, and "immediate" (serve the stale answer, then refresh)
        sub: dict[str, Any] = {"duration": _duration(opt.args[0]) if opt.args else "1h",
                               "refresh_mode": opt.args[1].text if len(opt.args) > 1 else "immediate"}
        b.note("cache.serve_stale", opt.name, "cache: serve_stale")
        if opt.args:
            b.note("cache.serve_stale.duration", opt.args[0], "cache: serve_stale")
        if len(opt.args) > 1:
            b.note("cache.serve_stale.refresh_mode", opt.args[1], "cache: serve_stale")
        out["serve_stale"] = sub

    def disable(opt: Directive) -> None:
        if not opt.args or opt.args[0].text not in ("success", "denial"):
            raise err(opt.name, "cache: disable", "'success' or 'denial', then zones")
        kind = opt.args[0].text
        sub = out.setdefault("disable", {})
        if kind in sub:
            raise err(opt.name, f"cache: disable {kind}", "one 'disable' line per kind")
        sub[kind] = _zones_arg(b, opt.args[1:], "cache: disable") if len(opt.args) > 1 else list(b.zones)
        b.note("cache.disable", opt.name, "cache: disable")
        b.note(f"cache.disable.{kind}", opt.name, f"cache: disable {kind}")

    _options(b, d, "cache", out, {
        "success": capacity("success"), "denial": capacity("denial"), "prefetch": prefetch,
        "serve_stale": serve_stale, "disable": disable,
    }, repeatable=("disable",))
    b.data["cache"] = out if out else {}


def _map_loop(b: Block, d: Directive) -> None:
    _no_args(d)
    _no_block(d)
    b.note("loop", d.name, "loop")
    b.data["loop"] = {}


def _map_reload(b: Block, d: Directive) -> None:
    _no_block(d)
    if len(d.args) > 2:
        raise err(d.args[2], "reload", "[INTERVAL [JITTER]]")
    out: dict[str, Any] = {}
    b.note("reload", d.name, "reload")
    if d.args:
        out["interval"] = _duration(d.args[0])
        b.note("reload.interval", d.args[0], "reload: INTERVAL")
    if len(d.args) > 1:
        out["jitter"] = _duration(d.args[1])
        b.note("reload.jitter", d.args[1], "reload: JITTER")
    b.data["reload"] = out


def _map_loadbalance(b: Block, d: Directive) -> None:
    _no_block(d)
    b.note("loadbalance", d.args[0] if d.args else d.name, "loadbalance")
    if len(d.args) > 1:
        raise err(d.args[1], "loadbalance", "round_robin (weighted is not supported)")
    b.data["loadbalance"] = d.args[0].text if d.args else "round_robin"


def _map_hosts(b: Block, d: Directive) -> None:
    out: dict[str, Any] = {"file": d.args[0].text if d.args else "/etc/hosts"}
    b.note("hosts", d.name, "hosts")
    b.note("hosts.file", d.args[0] if d.args else d.name, "hosts: FILE")
    out["zones"] = _zones_arg(b, d.args[1:], "hosts") if len(d.args) > 1 else list(b.zones)
    b.note("hosts.zones", d.args[1] if len(d.args) > 1 else d.name, "hosts: ZONES")
    entries: list[str] = []
    rest: list[Directive] = []
    for opt in d.block or ():
        try:
            ipaddress.ip_address(opt.text.split("%", 1)[0])
        except ValueError:
            rest.append(opt)
            continue
        if not opt.args or opt.block is not None:
            raise err(opt.name, "hosts", f"IP NAME... on an entry line, got {opt.text!r} alone")
        b.note(f"hosts.entries[{len(entries)}]", opt.name, "hosts")
        entries.append(" ".join([opt.text] + [a.text for a in opt.args]))
    out["entries"] = entries
    b.note("hosts.entries", d.name, "hosts")

    def fallthrough(opt: Directive) -> None:
        b.note("hosts.fallthrough", opt.name, "hosts: fallthrough")
        out["fallthrough"] = _zones_arg(b, opt.args, "hosts: fallthrough") if opt.args else True

    _options(b, Directive(d.name, d.args, rest), "hosts", out, {"fallthrough": fallthrough})
    b.data["hosts"] = out


def _map_log(b: Block, d: Directive) -> None:
    out: dict[str, Any] = {}
    b.note("log", d.name, "log")
    args = list(d.args)
    if len(args) > 1 and "{" in args[-1].text:
        fmt = args.pop()
        text = fmt.text
        out["format"] = "common" if text in ("{common}", _COMMON_FORMAT) else (
            "combined" if text == "{combined}" else text)
        b.note("log.format", fmt, "log: FORMAT")
    if args:
        names = _zones_arg(b, args, "log")
        if not _covers_block(b, names):
            out["names"] = names  # refused by the validation: logging part of a block only
            b.note("log.names", args[0], "log: NAMES")

    def klass(opt: Directive) -> None:
        classes = [a.text for a in opt.args]
        if not classes:
            raise err(opt.name, "log: class", "one or more of all, success, denial, error")
        have = out.setdefault("classes", [])  # several class lines add up (CoreDNS ORs them)
        for i, a in enumerate(opt.args):
            b.note(f"log.classes[{len(have) + i}]", a, "log: class")
        have.extend(classes)
        b.note("log.classes", opt.name, "log: class")

    _options(b, d, "log", out, {"class": klass}, repeatable=("class",))
    b.data["log"] = out


def _map_debug(b: Block, d: Directive) -> None:
    _no_args(d)
    _no_block(d)
    b.note("debug", d.name, "debug")
    b.data["debug"] = {}


def _map_autopath(b: Block, d: Directive) -> None:
    """``autopath [ZONE...] RESOLV-CONF`` → ``autopath: {resolv_conf, zones}`` (kubedns.plugins.autopath)."""
    _no_block(d)
    if not d.args:
        raise err(d.name, "autopath", "[ZONE...] RESOLV-CONF (a resolv.conf file or @kubernetes)")
    out: dict[str, Any] = {"resolv_conf": d.args[-1].text}
    b.note("autopath", d.name, "autopath")
    b.note("autopath.resolv_conf", d.args[-1], "autopath: RESOLV-CONF")
    if len(d.args) > 1:
        out["zones"] = _zones_arg(b, d.args[:-1], "autopath")
        b.note("autopath.zones", d.args[0], "autopath: ZONES")
    b.data["autopath"] = out


def _map_k8s_external(b: Block, d: Directive) -> None:
    """``k8s_external [ZONE...] { apex APEX; ttl TTL; headless; fallthrough [ZONE...] }`` →
    ``k8s_external: {zones, apex, ttl, headless, fallthrough}`` (kubedns.plugins.k8s_external)."""
    out: dict[str, Any] = {}
    b.note("k8s_external", d.name, "k8s_external")
    if d.args:
        out["zones"] = _zones_arg(b, d.args, "k8s_external")
        b.note("k8s_external.zones", d.args[0], "k8s_external: ZONES")

    def fallthrough(opt: Directive) -> None:
        b.note("k8s_external.fallthrough", opt.name, "k8s_external: fallthrough")
        out["fallthrough"] = _zones_arg(b, opt.args, "k8s_external: fallthrough") if opt.args else True

    def one(name: str) -> Any:
        def fn(opt: Directive) -> None:
            if len(opt.args) != 1 or opt.block is not None:
                raise err(opt.name, f"k8s_external: {name}", f"one {name.upper()}")
            b.note(f"k8s_external.{name}", opt.args[0], f"k8s_external: {name}")
            out[name] = _scalar(opt.args[0]) if name == "ttl" else opt.args[0].text
        return fn

    _options(b, d, "k8s_external", out, {"fallthrough": fallthrough, "apex": one("apex"), "ttl": one("ttl")})
    b.data["k8s_external"] = out


MAPPERS = {
    "autopath": _map_autopath,
    "k8s_external": _map_k8s_external,
    "bind": _map_bind,
    "errors": _map_errors,
    "health": _map_health,
    "ready": _map_address(":8181"),
    "prometheus": _map_address("localhost:9153"),  # CoreDNS's default; kubeadm writes :9153
    "kubernetes": _map_kubernetes,
    "forward": _map_forward,
    "cache": _map_cache,
    "loop": _map_loop,
    "reload": _map_reload,
    "loadbalance": _map_loadbalance,
    "hosts": _map_hosts,
    "log": _map_log,
    "debug": _map_debug,
    "rewrite": map_rewrite,
    "template": map_template,
    **POLICY_MAPPERS,  # any, acl, bufsize, minimal, transfer
}
