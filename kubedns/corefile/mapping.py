"""Corefile server blocks → the nested dict the YAML config gives, plus where each value came from.

The mapping only re-shapes: each directive and option becomes the YAML key the config already
validates (``ttl 30`` in ``kubernetes`` becomes ``servers[0].kubernetes.ttl: 30``), and the same
validation (:func:`kubedns.config.parse_data`) then runs on it, so both syntaxes accept and
refuse exactly the same settings.  Beside the dict a side table maps each key path to the
``file:line`` and directive it came from; :func:`translate` uses it to turn the validation's
``servers[0].kubernetes.ttl: expected ...`` into ``Corefile:7: kubernetes: ttl: expected ...``.

What the mapping itself decides is only what has no YAML spelling: server block keys
(``dns://zone:port``, CIDR reverse zones), ``bind`` (one block per address), CoreDNS's defaults
where they differ from the YAML's (``prometheus`` on ``localhost:9153``, ``serve_stale``'s
``immediate``, a plugin's zones defaulting to the block's), and plugins kubedns does not have,
which refuse the whole file.  Options with no kubedns equivalent map to a key of their own name,
which the validation refuses naming the option.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from kubedns.corefile.lexer import CorefileSyntaxError, Token
from kubedns.corefile.parser import Corefile, Directive, keys_text
from kubedns.corefile.plugins import MAPPERS, Block, Where, err, norm, zone_names

__all__ = ["SUPPORTED", "Where", "map_corefile", "translate"]

#: every plugin a Corefile may name (``import`` is expanded by the parser)
SUPPORTED = (
    "bind", "cache", "debug", "errors", "forward", "health", "hosts", "import", "kubernetes",
    "loadbalance", "log", "loop", "prometheus", "ready", "reload",
    "rewrite", "template",
    "acl", "any", "bufsize", "minimal", "transfer",
    "autopath", "k8s_external",
)
#: plugins CoreDNS lets a server block use more than once
_REPEATABLE = ("bind", "acl", "transfer", "rewrite", "template")
#: YAML key → Corefile option where they differ; None: not an option line (an argument)
_OPTION_NAMES: dict[str, dict[str, str | None]] = {
    "forward": {"to": None, "tls_ca": "tls"},
    "kubernetes": {"ignore_empty_service": "ignore empty_service", "context": None, "zones": None},
    "cache": {"ttl": None, "zones": "ZONES"},
    "health": {"listen": None},
    "ready": {"listen": None},
    "prometheus": {"listen": None},
    "hosts": {"file": None, "zones": None, "entries": None},
    "k8s_external": {"zones": None},
    "log": {"classes": "class", "names": "NAMES", "format": "FORMAT"},
    "reload": {"interval": "INTERVAL", "jitter": "JITTER"},
}
#: what CoreDNS accepts: an option kubedns refuses is named as CoreDNS's, not as a typo
_COREDNS_OPTIONS = {
    "kubernetes": "endpoint tls kubeconfig namespaces labels pods endpoint_pod_names ttl noendpoints fallthrough "
                  "ignore namespace_labels multicluster startup_timeout apiserver_qps apiserver_burst "
                  "apiserver_max_inflight",
    "forward": "except force_tcp prefer_udp expire max_fails tls tls_servername policy health_check "
               "max_concurrent max_age next failfast_all_unhealthy_upstreams failover",
    "cache": "success denial prefetch serve_stale servfail disable keepttl ZONES",
    "log": "class NAMES",
    "errors": "consolidate stacktrace",
    "health": "lameduck",
    "hosts": "ttl reload no_reverse fallthrough",
    "k8s_external": "apex ttl headless fallthrough",
    "reload": "JITTER",
}
_SCHEMES_REFUSED = ("tls://", "grpc://", "https://", "quic://")


@dataclass(slots=True)
class _Key:
    zones: list[str]
    port: int
    tok: Token


def _parse_key(tok: Token) -> list[_Key]:
    text = tok.text
    label = "server block key"
    low = text.lower()
    if low.startswith(_SCHEMES_REFUSED):
        scheme = low.split("://", 1)[0]
        raise err(tok, label, f"a dns:// zone (kubedns serves plain DNS; {scheme}:// is not supported), got {text!r}")
    if low.startswith("dns://"):
        text = text[6:]
    elif "://" in text:
        raise err(tok, label, f"zone[:port] with an optional dns:// in front, got {tok.text!r}")
    port = 53
    host = text
    if text.startswith("[") or text.count(":") > 1:
        if text.startswith("[") and "]:" in text:
            host, port_s = text[1:].split("]:", 1)
        else:
            host, port_s = text, ""
        if port_s:
            port = _port(tok, port_s)
    elif ":" in text:
        host, port_s = text.split(":", 1)
        port = _port(tok, port_s)
    if host in ("", "."):
        return [_Key(["."], port, tok)]
    return [_Key([norm(z) for z in zone_names(Token(host, tok.file, tok.line), label)], port, tok)]


def _port(tok: Token, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise err(tok, "server block key", f"a port from 1 to 65535 after ':', got {tok.text!r}")
    return int(text)


def _check_plugins(corefile: Corefile) -> None:
    """A plugin kubedns does not have refuses the whole file, naming each one and what is supported."""
    unknown: list[Directive] = []
    for blk in corefile.blocks:
        unknown.extend(d for d in blk.directives if d.text not in MAPPERS)
    if not unknown:
        return
    first = unknown[0]
    others = "".join(f", {d.text!r} at {d.where()}" for d in unknown[1:6])
    more = f" and {len(unknown) - 6} more" if len(unknown) > 6 else ""
    raise CorefileSyntaxError(
        first.name.file, first.name.line,
        f"{first.text}: expected a plugin kubedns has ({', '.join(SUPPORTED)}); "
        f"{first.text!r} is not one{' (nor ' + others[2:] + more + ')' if others else ''}",
    )


def map_corefile(corefile: Corefile) -> tuple[dict[str, Any], dict[str, Where]]:
    """The YAML-shaped config of ``corefile`` and the side table of where each key came from."""
    if not corefile.blocks:
        raise CorefileSyntaxError(corefile.path, 1, "expected at least one server block, such as '.:53 { ... }'")
    _check_plugins(corefile)
    servers: list[dict[str, Any]] = []
    table: dict[str, Where] = {}
    for syntax in corefile.blocks:
        keys = [k for tok in syntax.keys for k in _parse_key(tok)]
        by_port: dict[int, list[_Key]] = {}
        for k in keys:
            by_port.setdefault(k.port, []).append(k)
        all_zones = [z for k in keys for z in k.zones]
        blk = Block(syntax, all_zones)
        for d in syntax.directives:
            if d.text in blk.seen and d.text not in _REPEATABLE:
                raise err(d.name, d.text, f"the plugin once per server block (first at {blk.seen[d.text].where()})")
            blk.seen[d.text] = d
            MAPPERS[d.text](blk, d)
        key_text = keys_text(syntax.keys)
        first_key = syntax.keys[0]
        for port, pkeys in by_port.items():
            zones = [z for k in pkeys for z in k.zones]
            hosts = blk.binds or [("", first_key)]  # no bind: every address, as YAML's ":53"
            for host, host_tok in hosts:
                i = len(servers)
                h = f"[{host}]" if ":" in host else host
                server: dict[str, Any] = {"zones": list(zones), "listen": f"{h}:{port}"}
                server.update(copy.deepcopy(blk.data))
                servers.append(server)
                base = f"servers[{i}]"
                table[base] = Where(first_key.file, first_key.line, f"server block {key_text}")
                table[f"{base}.zones"] = Where(first_key.file, first_key.line, f"server block {key_text}")
                for j, k in enumerate(k2 for k2 in pkeys for _ in k2.zones):
                    table[f"{base}.zones[{j}]"] = Where(k.tok.file, k.tok.line, f"server block {key_text}")
                table[f"{base}.listen"] = Where(host_tok.file, host_tok.line, "bind" if blk.binds else f"server block {key_text}")
                for rel, where in blk.table.items():
                    table[f"{base}.{rel}"] = where
    return {"servers": servers}, table


_KEY_TAIL = re.compile(r"(\.[^.\[]+|\[\d+\])$")
_SERVERS_REF = re.compile(r"servers\[(\d+)\]")


def translate(err: Any, table: dict[str, Where]) -> CorefileSyntaxError:
    """A validation error (``path: servers[0].kubernetes.ttl: expected ...``) as ``file:line:
    kubernetes: ttl: expected ...``, from the side table; an unknown key says it is not supported."""
    key: str = err.key
    where_part = f"{err.path}: {key}: " if key else f"{err.path}: "
    msg = str(err)
    rest = msg[len(where_part):] if msg.startswith(where_part) else msg
    probe, tail = key, ""
    while probe and probe not in table:
        m = _KEY_TAIL.search(probe)
        if m is None:
            break
        tail = m.group(1) + tail
        probe = probe[: m.start()]
    where = table.get(probe)
    if where is None:
        return CorefileSyntaxError(err.path, 0, f"{key}: {rest}" if key else rest)
    label = where.label
    expected = str(getattr(err, "expected", ""))
    if expected.startswith("one of the keys "):
        # a plugin or an option the kubedns side does not have (yet)
        plugin = label.split(":", 1)[0]
        if re.fullmatch(r"servers\[\d+\]\.[^.\[]+", key):
            return CorefileSyntaxError(where.file, where.line, f"{plugin}: not supported by kubedns (yet)")
        names = _OPTION_NAMES.get(plugin, {})
        keys = expected[len("one of the keys "):].split(", ")
        allowed = sorted(str(names.get(k, k)) for k in keys if names.get(k, k) is not None)
        opt = names.get(key.rsplit(".", 1)[-1]) or key.rsplit(".", 1)[-1]
        known = opt in _COREDNS_OPTIONS.get(plugin, "").split()
        why = f"CoreDNS's {opt!r} is not supported by kubedns" if known else f"{opt!r} is not one"
        return CorefileSyntaxError(
            where.file, where.line,
            f"{plugin}: {opt}: expected an option kubedns supports for {plugin} ({', '.join(allowed) or 'none'}); {why}",
        )
    if tail:
        label = f"{label}: {tail.lstrip('.')}"

    def ref(m: re.Match[str]) -> str:
        w = table.get(f"servers[{m.group(1)}]")
        return f"the server block at {w}" if w else m.group(0)

    return CorefileSyntaxError(where.file, where.line, f"{label}: {_SERVERS_REF.sub(ref, rest)}")
