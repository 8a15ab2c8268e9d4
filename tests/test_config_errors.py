"""Every config key, attacked with wrong input: each rejection names the file, the key and the expectation.

The project standard: a bad config is a :class:`~kubedns.config.ConfigError` whose one-line message
reads ``FILE: KEY: expected WHAT[, got VALUE]`` -- never a Python traceback, never a silently
accepted wrong value.  The table below is fed, one row per test, through :func:`kubedns.config.load`
(a real file in ``tmp_path``, so the message must carry that path); a few rows start the real
``twistd -n kubedns`` with a bad file and check it exits non-zero with the message on one line.

Parsing only, apart from those processes, which never get as far as opening a socket; no config
here forwards anywhere but 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kubedns.config import ConfigError, load
from kubedns.configbase import Address, key_name, parse_address, parse_duration
from kubedns.serve.workers import TWISTD
from tests.conftest import REPO

UP = "127.0.0.1:5300"  # a loopback port nothing listens on; nothing here is started anyway
DUR = "a duration"
ADDR = 'an address "host:port"'
ZONE = "a DNS zone name"


def block(*lines: str, fwd: bool = True) -> str:
    """One server block for ``.`` forwarding to loopback, plus ``lines`` (block-style YAML)."""
    body = ["servers:", "  - zones: ['.']"]
    if fwd:
        body.append(f"    forward: {{to: ['{UP}']}}")
    body += [f"    {line}" for line in lines]
    return "\n".join(body) + "\n"


def forward(*opts: str) -> str:
    """A block whose ``forward`` section has ``opts`` (and ``to: [UP]`` unless ``to`` is among them)."""
    lines = ["forward:"]
    if not any(o.startswith("to:") for o in opts):
        lines.append(f"  to: ['{UP}']")
    lines += [f"  {o}" for o in opts]
    return block(*lines, fwd=False)


def k8s(*opts: str) -> str:
    """A block with only a ``kubernetes`` section holding ``opts``."""
    return block("kubernetes:", *[f"  {o}" for o in opts], fwd=False) if opts else block("kubernetes: {}", fwd=False)


def top(*lines: str) -> str:
    """A valid block plus top-level ``lines``."""
    return block() + "".join(f"{line}\n" for line in lines)


def case(text: str, key: str, expected: str, *, id: str):
    return pytest.param(text, key, expected, id=id)


# (config text, key path the message must name, fragment of the expectation)
CASES = [
    # -- the document ---------------------------------------------------------------------------
    case("", "", "a mapping with a 'servers' list", id="empty-file"),
    case("# only a comment\n", "", "a mapping with a 'servers' list", id="only-comment"),
    case("- servers\n", "", "a mapping with a 'servers' list", id="root-list"),
    case("hello\n", "", "a mapping with a 'servers' list", id="root-string"),
    case("42\n", "", "a mapping with a 'servers' list", id="root-number"),
    case("workers: 1\n", "servers", "the key is required", id="servers-missing"),
    case("server:\n  - forward: 127.0.0.1\n", "server", "one of the keys servers, tcp_idle_timeout, workers",
         id="top-level-typo"),
    case("servers: []\n", "servers", "a non-empty list of server blocks", id="servers-empty"),
    case("servers:\n", "servers", "a list", id="servers-null"),
    case("servers: {forward: 127.0.0.1}\n", "servers", "a list", id="servers-mapping"),
    case("servers: '127.0.0.1'\n", "servers", "a list", id="servers-string"),
    case("servers: [5]\n", "servers[0]", "a mapping", id="block-number"),
    case("servers: [[forward]]\n", "servers[0]", "a mapping", id="block-list"),
    case("servers: ['forward: 127.0.0.1']\n", "servers[0]", "a mapping", id="block-string"),
    case("servers:\n  - zones: ['.']\n", "servers[0]", "at least one of kubernetes or forward", id="block-no-plugin"),
    case(block("fowrard: 127.0.0.1"), "servers[0].fowrard", "one of the keys acl, any, autopath, bufsize, cache, debug, errors, forward", id="block-typo"),
    case(block("Cache: 30"), "servers[0].Cache", "one of the keys", id="block-key-case"),
    case(block("1: x"), "servers[0].1", "one of the keys", id="block-key-number"),
    case(block('"for\\nward": 1'), "servers[0].'for\\nward'", "one of the keys", id="block-key-newline"),
    case(block(f"{'k' * 500}: 1"), f"servers[0].{key_name('k' * 500)}", "one of the keys", id="block-key-long"),
    case(block('"a\\nb": 1', '"a\\nb": 2'), "servers[0].'a\\nb'", "each key once", id="dup-key-newline"),
    # -- workers, tcp_idle_timeout ----------------------------------------------------------------
    case(top("workers: 0"), "workers", "a whole number from 1 to 64", id="workers-zero"),
    case(top("workers: 65"), "workers", "a whole number from 1 to 64", id="workers-too-many"),
    case(top("workers: -1"), "workers", "a whole number from 1 to 64", id="workers-negative"),
    case(top("workers: '2'"), "workers", "a whole number from 1 to 64", id="workers-string"),
    case(top("workers: 1.5"), "workers", "a whole number from 1 to 64", id="workers-float"),
    case(top("workers: true"), "workers", "a whole number from 1 to 64", id="workers-bool"),
    case(top("workers:"), "workers", "a whole number from 1 to 64", id="workers-null"),
    case(top("workers: [1]"), "workers", "a whole number from 1 to 64", id="workers-list"),
    case(top("tcp_idle_timeout: 0"), "tcp_idle_timeout", "at least 0.1s", id="idle-zero"),
    case(top("tcp_idle_timeout: 2h"), "tcp_idle_timeout", "at most 3600s", id="idle-too-long"),
    case(top("tcp_idle_timeout: 5x"), "tcp_idle_timeout", DUR, id="idle-bad-unit"),
    case(top("tcp_idle_timeout: -1s"), "tcp_idle_timeout", DUR, id="idle-negative-string"),
    case(top("tcp_idle_timeout: -1"), "tcp_idle_timeout", DUR, id="idle-negative"),
    case(top("tcp_idle_timeout: 1e400s"), "tcp_idle_timeout", DUR, id="idle-exponent"),
    case(top("tcp_idle_timeout: nan"), "tcp_idle_timeout", DUR, id="idle-nan-string"),
    case(top("tcp_idle_timeout: .nan"), "tcp_idle_timeout", DUR, id="idle-nan"),
    case(top("tcp_idle_timeout: .inf"), "tcp_idle_timeout", DUR, id="idle-inf"),
    case(top("tcp_idle_timeout: true"), "tcp_idle_timeout", DUR, id="idle-bool"),
    case(top("tcp_idle_timeout: [10]"), "tcp_idle_timeout", DUR, id="idle-list"),
    case(top("tcp_idle_timeout: {s: 10}"), "tcp_idle_timeout", DUR, id="idle-mapping"),
    case(top("tcp_idle_timeout: ''"), "tcp_idle_timeout", DUR, id="idle-empty"),
    # -- zones --------------------------------------------------------------------------------------
    case(block("kubernetes: {}", fwd=False).replace("zones: ['.']", "zones: []"), "servers[0].zones",
         "a non-empty list of zones", id="zones-empty"),
    case(block().replace("zones: ['.']", "zones: 5"), "servers[0].zones", "a list", id="zones-number"),
    case(block().replace("zones: ['.']", "zones: {a: 1}"), "servers[0].zones", "a list", id="zones-mapping"),
    case(block().replace("zones: ['.']", "zones:"), "servers[0].zones", "a list", id="zones-null"),
    case(block().replace("zones: ['.']", "zones: [5]"), "servers[0].zones[0]", "a non-empty string", id="zone-number"),
    case(block().replace("zones: ['.']", "zones: ['']"), "servers[0].zones[0]", "a non-empty string", id="zone-empty"),
    case(block().replace("zones: ['.']", "zones: ['..']"), "servers[0].zones[0]", ZONE, id="zone-two-dots"),
    case(block().replace("zones: ['.']", "zones: ['a..b']"), "servers[0].zones[0]", ZONE, id="zone-empty-label"),
    case(block().replace("zones: ['.']", "zones: ['.a']"), "servers[0].zones[0]", ZONE, id="zone-leading-dot"),
    case(block().replace("zones: ['.']", "zones: ['a..']"), "servers[0].zones[0]", ZONE, id="zone-trailing-dots"),
    case(block().replace("zones: ['.']", "zones: ['exa mple.com']"), "servers[0].zones[0]", ZONE, id="zone-space"),
    case(block().replace("zones: ['.']", "zones: ['dns://example.org:53']"), "servers[0].zones[0]", ZONE,
         id="zone-url"),
    case(block().replace("zones: ['.']", "zones: ['bücher.de']"), "servers[0].zones[0]", ZONE, id="zone-non-ascii"),
    case(block().replace("zones: ['.']", 'zones: ["a\\n.test"]'), "servers[0].zones[0]", ZONE, id="zone-newline"),
    case(block().replace("zones: ['.']", f"zones: ['{'a' * 64}.local']"), "servers[0].zones[0]", ZONE,
         id="zone-label-64"),
    case(block().replace("zones: ['.']", f"zones: ['{'.'.join(['abcdefgh'] * 30)}']"), "servers[0].zones[0]", ZONE,
         id="zone-name-too-long"),
    case("servers:\n  - kubernetes: {}\n  - zones: ['.']\n    forward: 127.0.0.1\n", "servers[1].zones",
         "zones not already served on :53 by servers[0]", id="zones-duplicate-default"),
    case("servers:\n  - zones: [Example.ORG.]\n    forward: 127.0.0.1\n"
         "  - zones: [example.org]\n    forward: 127.0.0.2\n",
         "servers[1].zones", "by servers[0]", id="zones-duplicate-case-and-dot"),
    case("servers:\n  - zones: [a.test]\n    listen: '[::1]:53'\n    forward: 127.0.0.1\n"
         "  - zones: [a.test]\n    listen: '[0:0::1]:53'\n    forward: 127.0.0.2\n",
         "servers[1].zones", "by servers[0]", id="zones-duplicate-ipv6-spelling"),
    case(block().replace("zones: ['.']", "zones: [a.test, A.test.]"), "servers[0].zones", "once",
         id="zones-duplicate-in-block"),
    # -- listen -------------------------------------------------------------------------------------
    case(block("listen: '300.1.1.1:53'"), "servers[0].listen", ADDR, id="listen-bad-ipv4"),
    case(block("listen: ':99999'"), "servers[0].listen", ADDR, id="listen-port-too-big"),
    case(block("listen: '[::1'"), "servers[0].listen", ADDR, id="listen-unclosed-bracket"),
    case(block("listen: '[::1]x'"), "servers[0].listen", ADDR, id="listen-junk-after-bracket"),
    case(block("listen: 'host:'"), "servers[0].listen", ADDR, id="listen-hostname"),
    case(block("listen: '127.0.0.1:abc'"), "servers[0].listen", ADDR, id="listen-port-word"),
    case(block("listen: '127.0.0.1:-1'"), "servers[0].listen", ADDR, id="listen-port-negative"),
    case(block("listen: '127.0.0.1:'"), "servers[0].listen", ADDR, id="listen-empty-port"),
    case(block("listen: ':'"), "servers[0].listen", ADDR, id="listen-colon"),
    case(block("listen: '127.0.0.1:0'"), "servers[0].listen", ADDR, id="listen-port-zero"),
    case(block("listen: '127.0.0.1:\u0665\u0663'"), "servers[0].listen", ADDR, id="listen-non-ascii-digits"),
    case(block("listen: 53"), "servers[0].listen", ADDR, id="listen-number"),
    case(block("listen:"), "servers[0].listen", ADDR, id="listen-null"),
    case(block("listen: ['127.0.0.1:53']"), "servers[0].listen", ADDR, id="listen-list"),
    case(block("listen: ''"), "servers[0].listen", ADDR, id="listen-empty"),
    # -- kubernetes -------------------------------------------------------------------------------
    case(block("kubernetes: 5", fwd=False), "servers[0].kubernetes", "a mapping", id="k8s-number"),
    case(block("kubernetes: cluster.local", fwd=False), "servers[0].kubernetes", "a mapping", id="k8s-string"),
    case(block("kubernetes: [cluster.local]", fwd=False), "servers[0].kubernetes", "a mapping", id="k8s-list"),
    case(k8s("zone: [cluster.local]"), "servers[0].kubernetes.zone", "one of the keys context, endpoint,",
         id="k8s-typo"),
    case(k8s("zones: []"), "servers[0].kubernetes.zones", "a non-empty list of zones", id="k8s-zones-empty"),
    case(k8s("zones: 5"), "servers[0].kubernetes.zones", "a list", id="k8s-zones-number"),
    case(k8s("zones: [cluster..local]"), "servers[0].kubernetes.zones[0]", ZONE, id="k8s-zone-bad"),
    case(k8s("kubeconfig: 5"), "servers[0].kubernetes.kubeconfig", "a non-empty string", id="k8s-kubeconfig-number"),
    case(k8s("kubeconfig: ''"), "servers[0].kubernetes.kubeconfig", "a non-empty string", id="k8s-kubeconfig-empty"),
    case(k8s("kubeconfig: [a]"), "servers[0].kubernetes.kubeconfig", "a non-empty string", id="k8s-kubeconfig-list"),
    case(k8s("manifests: 5"), "servers[0].kubernetes.manifests", "a non-empty string", id="k8s-manifests-number"),
    case(k8s("manifests: {tmp}/missing.yaml"), "servers[0].kubernetes.manifests", "file not found",
         id="k8s-manifests-missing"),
    case(k8s("manifests: {tmp}"), "servers[0].kubernetes.manifests", "a readable YAML file",
         id="k8s-manifests-directory"),
    case(k8s("manifests: /dev/zero"), "servers[0].kubernetes.manifests", "not a regular file",
         id="k8s-manifests-device"),
    case(k8s("pods: secure"), "servers[0].kubernetes.pods", "one of insecure | verified | disabled", id="k8s-pods-typo"),
    case(k8s("pods: true"), "servers[0].kubernetes.pods", "one of insecure | verified | disabled", id="k8s-pods-bool"),
    case(k8s("pods: [insecure]"), "servers[0].kubernetes.pods", "one of insecure", id="k8s-pods-list"),
    case(k8s("ttl: -1"), "servers[0].kubernetes.ttl", "a whole number from 0 to 3600", id="k8s-ttl-negative"),
    case(k8s("ttl: 3601"), "servers[0].kubernetes.ttl", "a whole number from 0 to 3600", id="k8s-ttl-too-big"),
    case(k8s("ttl: abc"), "servers[0].kubernetes.ttl", "a whole number from 0 to 3600", id="k8s-ttl-word"),
    case(k8s("ttl: 30.5"), "servers[0].kubernetes.ttl", "a whole number from 0 to 3600", id="k8s-ttl-float"),
    case(k8s("ttl: true"), "servers[0].kubernetes.ttl", "a whole number from 0 to 3600", id="k8s-ttl-bool"),
    case(k8s("ttl:"), "servers[0].kubernetes.ttl", "a whole number from 0 to 3600", id="k8s-ttl-null"),
    case(k8s("ttl: 2001-01-01"), "servers[0].kubernetes.ttl", "a whole number", id="k8s-ttl-date"),
    case(k8s("fallthrough: 5"), "servers[0].kubernetes.fallthrough", "a list", id="k8s-fallthrough-number"),
    case(k8s("fallthrough: {a: 1}"), "servers[0].kubernetes.fallthrough", "a list", id="k8s-fallthrough-mapping"),
    case(k8s("fallthrough: [5]"), "servers[0].kubernetes.fallthrough[0]", "a non-empty string",
         id="k8s-fallthrough-item-number"),
    case(k8s("fallthrough: ['a..b']"), "servers[0].kubernetes.fallthrough[0]", ZONE, id="k8s-fallthrough-bad-zone"),
    # -- health, ready, prometheus ------------------------------------------------------------------
    case(block("health: 8080"), "servers[0].health", ADDR, id="health-number"),
    case(block("health: false"), "servers[0].health", ADDR, id="health-false"),
    case(block("health: [':8080']"), "servers[0].health", ADDR, id="health-list"),
    case(block("health: ':99999'"), "servers[0].health", ADDR, id="health-port-too-big"),
    case(block("health: 'localhost:'"), "servers[0].health", ADDR, id="health-empty-port"),
    case(block("health: {listen: '[::1'}"), "servers[0].health.listen", ADDR, id="health-listen-bracket"),
    case(block("health: {listen: 8080}"), "servers[0].health.listen", ADDR, id="health-listen-number"),
    case(block("health: {lameduck: -1s}"), "servers[0].health.lameduck", DUR, id="health-lameduck-negative"),
    case(block("health: {lameduck: 301s}"), "servers[0].health.lameduck", "at most 300s", id="health-lameduck-long"),
    case(block("health: {lameduck: 5x}"), "servers[0].health.lameduck", DUR, id="health-lameduck-unit"),
    case(block("health: {lameduck: .nan}"), "servers[0].health.lameduck", DUR, id="health-lameduck-nan"),
    case(block("health: {lameduck: true}"), "servers[0].health.lameduck", DUR, id="health-lameduck-bool"),
    case(block("health: {lamduck: 5s}"), "servers[0].health.lamduck", "one of the keys lameduck, listen",
         id="health-typo"),
    case(block("ready: ':99999'"), "servers[0].ready", ADDR, id="ready-port-too-big"),
    case(block("ready: 8181"), "servers[0].ready", ADDR, id="ready-number"),
    case(block("ready: {listen: '300.0.0.1:8181'}"), "servers[0].ready.listen", ADDR, id="ready-listen-bad-ip"),
    case(block("ready: {lameduck: 5s}"), "servers[0].ready.lameduck", "one of the keys listen", id="ready-extra-key"),
    case(block("prometheus: 'host:9153'"), "servers[0].prometheus", ADDR, id="prometheus-hostname"),
    case(block("prometheus: {listen: ':0'}"), "servers[0].prometheus.listen", ADDR, id="prometheus-port-zero"),
    case(block("prometheus: {path: /metrics}"), "servers[0].prometheus.path", "one of the keys listen",
         id="prometheus-extra-key"),
    # -- reload, log, errors ------------------------------------------------------------------------
    case(block("reload: 1s"), "servers[0].reload", "at least 2s", id="reload-too-short"),
    case(block("reload: 5x"), "servers[0].reload", DUR, id="reload-bad-unit"),
    case(block("reload: -30"), "servers[0].reload", DUR, id="reload-negative"),
    case(block("reload: .nan"), "servers[0].reload", DUR, id="reload-nan"),
    case(block("reload: .inf"), "servers[0].reload", DUR, id="reload-inf"),
    case(block("reload: " + "9" * 400), "servers[0].reload", DUR, id="reload-huge-number"),
    case(block("reload: '" + "9" * 400 + "s'"), "servers[0].reload", DUR, id="reload-huge-string"),
    case(block("reload: false"), "servers[0].reload", DUR, id="reload-false"),
    case(block("reload: [30s]"), "servers[0].reload", DUR, id="reload-list"),
    case(block("reload: {interval: 1}"), "servers[0].reload.interval", "at least 2s", id="reload-interval-short"),
    case(block("reload: {intervl: 30s}"), "servers[0].reload.intervl", "one of the keys interval", id="reload-typo"),
    case(block("log: 5"), "servers[0].log", "a mapping", id="log-number"),
    case(block("log: [json]"), "servers[0].log", "a mapping", id="log-list"),
    case(block("log: {format: xml}"), "servers[0].log.format", "one of common | json", id="log-format-bad"),
    case(block("log: {format: 1}"), "servers[0].log.format", "one of common | json", id="log-format-number"),
    case(block("log: {fromat: json}"), "servers[0].log.fromat", "one of the keys classes, format, names", id="log-typo"),
    case(block("errors: [x]"), "servers[0].errors", "a mapping", id="errors-list"),
    case(block("errors: {consolidate: -1s}"), "servers[0].errors.consolidate", DUR, id="errors-negative"),
    case(block("errors: {consolidate: .inf}"), "servers[0].errors.consolidate", DUR, id="errors-inf"),
    case(block("errors: {consolidate: 5x}"), "servers[0].errors.consolidate", DUR, id="errors-bad-unit"),
    case(block("errors: {consolodate: 5s}"), "servers[0].errors.consolodate", "one of the keys consolidate",
         id="errors-typo"),
    # -- forward ------------------------------------------------------------------------------------
    case(block("forward: 5", fwd=False), "servers[0].forward", "a mapping", id="fwd-number"),
    case(block("forward: true", fwd=False), "servers[0].forward", "a mapping", id="fwd-bool"),
    case(forward("too: 127.0.0.1"), "servers[0].forward.too", "one of the keys except, expire", id="fwd-typo"),
    case(forward("to: []"), "servers[0].forward.to", "from 1 to 15 upstreams", id="fwd-to-empty"),
    case(forward("to:"), "servers[0].forward.to", "a list", id="fwd-to-null"),
    case(forward("to: 5"), "servers[0].forward.to", "a list", id="fwd-to-number"),
    case(forward("to: {a: 1}"), "servers[0].forward.to", "a list", id="fwd-to-mapping"),
    case(forward("to: [" + ", ".join(f"'127.0.0.{i}'" for i in range(1, 17)) + "]"), "servers[0].forward.to",
         "from 1 to 15 upstreams (found 16)", id="fwd-to-16"),
    case(forward("to: [5]"), "servers[0].forward.to[0]", "upstreams like", id="fwd-to-number-item"),
    case(forward("to: ['']"), "servers[0].forward.to[0]", "upstreams like", id="fwd-to-empty-item"),
    case(forward("to: ['300.1.1.1']"), "servers[0].forward.to[0]", "upstreams like", id="fwd-to-bad-ipv4"),
    case(forward("to: ['127.0.0.1:99999']"), "servers[0].forward.to[0]", "out of range", id="fwd-to-port-too-big"),
    case(forward("to: ['127.0.0.1:0']"), "servers[0].forward.to[0]", "out of range", id="fwd-to-port-zero"),
    case(forward("to: ['[::1']"), "servers[0].forward.to[0]", "unclosed", id="fwd-to-bracket"),
    case(forward("to: ['host:']"), "servers[0].forward.to[0]", "upstreams like", id="fwd-to-hostname"),
    case(forward("to: ['dns.example.org']"), "servers[0].forward.to[0]", "not an IP address", id="fwd-to-name"),
    case(forward("to: ['https://127.0.0.1']"), "servers[0].forward.to[0]", "unsupported scheme", id="fwd-to-https"),
    case(forward("to: ['127.0.0.1%name']"), "servers[0].forward.to[0]", "only allowed with tls://",
         id="fwd-to-servername-plain"),
    case(forward("to: ['tls://127.0.0.1%']"), "servers[0].forward.to[0]", "empty server name", id="fwd-to-empty-sni"),
    case(forward("to: ['tls://127.0.0.1%a b']"), "servers[0].forward.to[0]", "a DNS name", id="fwd-to-bad-sni"),
    case(forward("to: ['{tmp}/missing.conf']"), "servers[0].forward.to[0]", "a readable resolv.conf file",
         id="fwd-to-resolv-missing"),
    case(forward("to: ['{tmp}']"), "servers[0].forward.to[0]", "resolv.conf", id="fwd-to-resolv-directory"),
    case(forward("to: ['{tmp}/empty.conf']"), "servers[0].forward.to[0]", "at least one nameserver line",
         id="fwd-to-resolv-empty"),
    case(forward("to: ['{tmp}/bogus.conf']"), "servers[0].forward.to[0]", "nameserver lines holding IP addresses",
         id="fwd-to-resolv-bogus"),
    case(forward("to: [/dev/zero]"), "servers[0].forward.to[0]", "a regular file", id="fwd-to-resolv-device"),
    case(forward("tls_servername: 5"), "servers[0].forward.tls_servername", "a non-empty string",
         id="fwd-servername-number"),
    case(forward("tls_servername: ''"), "servers[0].forward.tls_servername", "a non-empty string",
         id="fwd-servername-empty"),
    case(forward("tls_servername: 'dns example'"), "servers[0].forward.tls_servername", "a DNS name",
         id="fwd-servername-space"),
    case(forward("to: ['tls://127.0.0.1%a.test']", "tls_servername: b.test"), "servers[0].forward.tls_servername",
         "no tls_servername when an upstream names its own", id="fwd-servername-twice"),
    case(forward("tls_ca: 5"), "servers[0].forward.tls_ca", "a non-empty string", id="fwd-ca-number"),
    case(forward("tls_ca: '{tmp}/missing.pem'"), "servers[0].forward.tls_ca", "a readable PEM CA bundle",
         id="fwd-ca-missing"),
    case(forward("tls_ca: '{tmp}'"), "servers[0].forward.tls_ca", "PEM", id="fwd-ca-directory"),
    case(forward("tls_ca: '{tmp}/empty.conf'"), "servers[0].forward.tls_ca", "a PEM file holding at least one",
         id="fwd-ca-not-pem"),
    case(forward("tls_ca: /dev/zero"), "servers[0].forward.tls_ca", "a regular file", id="fwd-ca-device"),
    case(forward("policy: fastest"), "servers[0].forward.policy", "one of random | round_robin | sequential",
         id="fwd-policy-bad"),
    case(forward("policy:"), "servers[0].forward.policy", "one of random", id="fwd-policy-null"),
    case(forward("policy: [random]"), "servers[0].forward.policy", "one of random", id="fwd-policy-list"),
    case(forward("max_fails: -1"), "servers[0].forward.max_fails", "a whole number from 0 to 1000",
         id="fwd-max-fails-negative"),
    case(forward("max_fails: 1001"), "servers[0].forward.max_fails", "a whole number from 0 to 1000",
         id="fwd-max-fails-too-big"),
    case(forward("max_fails: '2'"), "servers[0].forward.max_fails", "a whole number", id="fwd-max-fails-string"),
    case(forward("max_fails: 2.5"), "servers[0].forward.max_fails", "a whole number", id="fwd-max-fails-float"),
    case(forward("max_fails: true"), "servers[0].forward.max_fails", "a whole number", id="fwd-max-fails-bool"),
    case(forward("max_fails:"), "servers[0].forward.max_fails", "a whole number", id="fwd-max-fails-null"),
    case(forward("health_check: 0"), "servers[0].forward.health_check", "at least 0.01s", id="fwd-hc-zero"),
    case(forward("health_check: 2h"), "servers[0].forward.health_check", "at most 3600s", id="fwd-hc-long"),
    case(forward("health_check: 5x"), "servers[0].forward.health_check", DUR, id="fwd-hc-unit"),
    case(forward("health_check: .nan"), "servers[0].forward.health_check", DUR, id="fwd-hc-nan"),
    case(forward("expire: -1s"), "servers[0].forward.expire", DUR, id="fwd-expire-negative"),
    case(forward("expire: 2h"), "servers[0].forward.expire", "at most 3600s", id="fwd-expire-long"),
    case(forward("expire: [1]"), "servers[0].forward.expire", DUR, id="fwd-expire-list"),
    case(forward("max_concurrent: -1"), "servers[0].forward.max_concurrent", "a whole number >= 0",
         id="fwd-max-concurrent-negative"),
    case(forward("max_concurrent: '1000'"), "servers[0].forward.max_concurrent", "a whole number",
         id="fwd-max-concurrent-string"),
    case(forward("force_tcp: 'true'"), "servers[0].forward.force_tcp", "true or false", id="fwd-force-tcp-string"),
    case(forward("force_tcp: 1"), "servers[0].forward.force_tcp", "true or false", id="fwd-force-tcp-number"),
    case(forward("force_tcp:"), "servers[0].forward.force_tcp", "true or false", id="fwd-force-tcp-null"),
    case(forward("prefer_udp: 'yes'"), "servers[0].forward.prefer_udp", "true or false", id="fwd-prefer-udp-string"),
    case(forward("except: 5"), "servers[0].forward.except", "a list", id="fwd-except-number"),
    case(forward("except: ['']"), "servers[0].forward.except[0]", "a non-empty string", id="fwd-except-empty"),
    case(forward("except: ['a..b']"), "servers[0].forward.except[0]", ZONE, id="fwd-except-bad-zone"),
    case(forward("timeout: 0"), "servers[0].forward.timeout", "at least 0.01s", id="fwd-timeout-zero"),
    case(forward("timeout: 61s"), "servers[0].forward.timeout", "at most 60s", id="fwd-timeout-long"),
    case(forward("timeout: nan"), "servers[0].forward.timeout", DUR, id="fwd-timeout-nan-string"),
    case(forward("timeout: 1e400s"), "servers[0].forward.timeout", DUR, id="fwd-timeout-exponent"),
    case(forward("timeout: .NaN"), "servers[0].forward.timeout", DUR, id="fwd-timeout-nan"),
    case(forward("timeout: " + "9" * 400), "servers[0].forward.timeout", DUR, id="fwd-timeout-huge"),
    # -- cache --------------------------------------------------------------------------------------
    case(block("cache: lots"), "servers[0].cache", "a mapping", id="cache-word"),
    case(block("cache: true"), "servers[0].cache", "a mapping", id="cache-bool"),
    case(block("cache: [30]"), "servers[0].cache", "a mapping", id="cache-list"),
    case(block("cache: .nan"), "servers[0].cache.ttl", "a whole number of seconds", id="cache-nan"),
    case(block("cache: " + "9" * 400), "servers[0].cache.ttl", "a whole number of seconds", id="cache-huge"),
    case(block("cache: {tll: 30}"), "servers[0].cache.tll", "one of the keys denial, denial_ttl, disable, keepttl, max_bytes, min_ttl", id="cache-typo"),
    case(block("cache: {ttl: -1}"), "servers[0].cache.ttl", "a whole number of seconds", id="cache-ttl-negative"),
    case(block("cache: {ttl: 8d}"), "servers[0].cache.ttl", "a whole number of seconds", id="cache-ttl-unit"),
    case(block("cache: {ttl: 500ms}"), "servers[0].cache.ttl", "a whole number of seconds", id="cache-ttl-fraction"),
    case(block("cache: {ttl: .inf}"), "servers[0].cache.ttl", "a whole number of seconds", id="cache-ttl-inf"),
    case(block("cache: {ttl: true}"), "servers[0].cache.ttl", "a whole number of seconds", id="cache-ttl-bool"),
    case(block("cache: {ttl: 10, min_ttl: 20}"), "servers[0].cache.min_ttl", "not above ttl", id="cache-min-above"),
    case(block("cache: {min_ttl: -5}"), "servers[0].cache.min_ttl", "a whole number of seconds", id="cache-min-neg"),
    case(block("cache: {denial_ttl: soon}"), "servers[0].cache.denial_ttl", "a whole number", id="cache-denial-word"),
    case(block("cache: {denial_ttl: .nan}"), "servers[0].cache.denial_ttl", "a whole number", id="cache-denial-nan"),
    case(block("cache: {servfail: 6s}"), "servers[0].cache.servfail", "at most 5s", id="cache-servfail-long"),
    case(block("cache: {servfail: -1s}"), "servers[0].cache.servfail", "a whole number", id="cache-servfail-neg"),
    case(block("cache: {size: 0}"), "servers[0].cache.size", "a whole number from 1 to 10000000", id="cache-size-0"),
    case(block("cache: {size: 10000001}"), "servers[0].cache.size", "from 1 to 10000000", id="cache-size-big"),
    case(block("cache: {size: big}"), "servers[0].cache.size", "a whole number", id="cache-size-word"),
    case(block("cache: {size: 1.5}"), "servers[0].cache.size", "a whole number", id="cache-size-float"),
    case(block("cache: {prefetch: true}"), "servers[0].cache.prefetch", "a number of queries", id="prefetch-bool"),
    case(block("cache: {prefetch: often}"), "servers[0].cache.prefetch", "a number of queries", id="prefetch-word"),
    case(block("cache: {prefetch: -1}"), "servers[0].cache.prefetch", "a whole number >= 0", id="prefetch-negative"),
    case(block("cache: {prefetch: {amount: 0}}"), "servers[0].cache.prefetch.amount", "a whole number >= 1",
         id="prefetch-amount-zero"),
    case(block("cache: {prefetch: {duration: 1m}}"), "servers[0].cache.prefetch.amount", "the key is required",
         id="prefetch-amount-missing"),
    case(block("cache: {prefetch: {amount: 2, duration: -1s}}"), "servers[0].cache.prefetch.duration", DUR,
         id="prefetch-duration-negative"),
    case(block("cache: {prefetch: {amount: 2, percentage: 5}}"), "servers[0].cache.prefetch.percentage",
         "from 10 to 90", id="prefetch-percentage-low"),
    case(block("cache: {prefetch: {amount: 2, percentage: 'abc%'}}"), "servers[0].cache.prefetch.percentage",
         "from 10 to 90, got 'abc%'", id="prefetch-percentage-word"),
    case(block("cache: {prefetch: {amount: 2, percentage: '\uff15\uff10%'}}"),
         "servers[0].cache.prefetch.percentage", "from 10 to 90", id="prefetch-percentage-fullwidth"),
    case(block("cache: {prefetch: {amount: 2, percentage: 95%}}"), "servers[0].cache.prefetch.percentage",
         "from 10 to 90", id="prefetch-percentage-high"),
    case(block("cache: {prefetch: {amount: 2, percent: 10}}"), "servers[0].cache.prefetch.percent",
         "one of the keys amount, duration, percentage", id="prefetch-typo"),
    case(block("cache: {serve_stale: 5x}"), "servers[0].cache.serve_stale", DUR, id="stale-unit"),
    case(block("cache: {serve_stale: 0}"), "servers[0].cache.serve_stale", "at least 0.001s", id="stale-zero"),
    case(block("cache: {serve_stale: [1h]}"), "servers[0].cache.serve_stale", DUR, id="stale-list"),
    case(block("cache: {serve_stale: .inf}"), "servers[0].cache.serve_stale", DUR, id="stale-inf"),
    case(block("cache: {serve_stale: {refresh_mode: lazy}}"), "servers[0].cache.serve_stale.refresh_mode",
         "one of verified | immediate", id="stale-mode-bad"),
    case(block("cache: {serve_stale: {duraton: 1h}}"), "servers[0].cache.serve_stale.duraton",
         "one of the keys duration, refresh_mode", id="stale-typo"),
    # -- loop ---------------------------------------------------------------------------------------
    case(block("loop: 30s"), "servers[0].loop", "true, false, or a mapping", id="loop-string"),
    case(block("loop: 5"), "servers[0].loop", "true, false, or a mapping", id="loop-number"),
    case(block("loop: []"), "servers[0].loop", "true, false, or a mapping", id="loop-list"),
    case(block("loop: {recheck: -1s}"), "servers[0].loop.recheck", DUR, id="loop-recheck-negative"),
    case(block("loop: {recheck: 2d}"), "servers[0].loop.recheck", DUR, id="loop-recheck-unit"),
    case(block("loop: {recheck: 25h}"), "servers[0].loop.recheck", "at most 86400s", id="loop-recheck-long"),
    case(block("loop: {recheck: .nan}"), "servers[0].loop.recheck", DUR, id="loop-recheck-nan"),
    case(block("loop: {rechek: 30s}"), "servers[0].loop.rechek", "one of the keys recheck", id="loop-typo"),
    # -- YAML itself (the key is empty: the message names the line instead) -------------------------
    case("servers:\n  - forward: [127.0.0.1\n", "", "valid YAML at line 3", id="yaml-unclosed-flow"),
    case("servers:\n\t- forward: 127.0.0.1\n", "", "valid YAML at line 2", id="yaml-tab"),
    case("servers:\n  - forward: 127.0.0.1\n   cache: 30\n", "", "valid YAML at line 3", id="yaml-bad-indent"),
    case("servers: [a: b: c]\n", "", "valid YAML at line 1", id="yaml-mapping-value"),
    case("servers: []\n---\nservers: []\n", "", "valid YAML at line 2", id="yaml-two-documents"),
    case("servers: *nowhere\n", "", "valid YAML at line 1", id="yaml-unknown-alias"),
    case("servers: !!python/object:os.system {}\n", "", "valid YAML at line 1", id="yaml-python-tag"),
    case("servers:\n  - kubernetes: {}\n    ? [a]\n    : 1\n", "", "valid YAML at line 3", id="yaml-unhashable-key"),
    case(k8s("ttl: 2001-13-45"), "", "valid YAML at line 4", id="yaml-bad-date"),
    case(k8s("ttl: !!int abc"), "", "valid YAML at line 4", id="yaml-bad-int-tag"),
    case(k8s("ttl: !!bool maybe"), "", "valid YAML at line 4", id="yaml-bad-bool-tag"),
    case(k8s("ttl: !!timestamp soon"), "", "valid YAML at line 4", id="yaml-bad-timestamp-tag"),
    case("servers:\n  - forward: 127.0.0.1\x00\n", "", "valid YAML at line 2", id="yaml-nul-character"),
    case("servers:\n  - forward: 127.0.0.1\x07\n", "", "valid YAML at line 2", id="yaml-control-character"),
    case("servers: " + "[" * 5000, "", "valid YAML", id="yaml-deep-nesting"),
    # duplicate keys: YAML says keys are unique; PyYAML keeps the last one silently
    case(block("forward: 127.0.0.2"), "servers[0].forward", "once", id="dup-key-block"),
    case(forward("max_fails: 1", "max_fails: 5"), "servers[0].forward.max_fails", "line 5", id="dup-key-forward"),
    case(top("workers: 1", "workers: 2"), "workers", "once", id="dup-key-top"),
    case(block("cache: {ttl: 30, 'ttl': 60}"), "servers[0].cache.ttl", "once", id="dup-key-quoted"),
]


@pytest.fixture
def tmpdir_files(tmp_path: Path) -> Path:
    (tmp_path / "empty.conf").write_text("# no nameserver here\nsearch example.org\n")
    (tmp_path / "bogus.conf").write_text("nameserver dns.example.org\n")
    return tmp_path


def check_message(msg: str, path: str, key: str, expected: str) -> None:
    """One line, starts with ``FILE: KEY: expected``, carries the expectation; short enough to read."""
    assert "Traceback" not in msg
    assert "\n" not in msg, msg
    assert len(msg) < 800, msg[:800]
    prefix = f"{path}: {key}: expected " if key else f"{path}: expected "
    assert msg.startswith(prefix), msg
    assert expected in msg, msg


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return str(info.value)


@pytest.mark.parametrize(("text", "key", "expected"), CASES)
def test_bad_config_is_rejected_naming_file_key_and_expectation(
    text: str, key: str, expected: str, tmpdir_files: Path
) -> None:
    path = tmpdir_files / "corefile.yaml"
    path.write_text(text.replace("{tmp}", str(tmpdir_files)), encoding="utf-8")
    check_message(load_error(path), str(path), key, expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400, "9" * 400 + "s", "1e400s", "-1s", "5x", "nan"])
def test_parse_duration_rejects_non_finite_and_overflowing(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:53", Address("0.0.0.0", 53)),
        (":1053", Address("", 1053)),
        ("[::1]:53", Address("::1", 53)),
        ("[0:0::1]:53", Address("::1", 53)),
        ("127.0.0.1", Address("127.0.0.1", 53)),
        ("::1", Address("::1", 53)),
        ("localhost:65535", Address("localhost", 65535)),
    ],
)
def test_valid_addresses_still_parse(text: str, address: Address) -> None:
    assert parse_address(text, 53) == address


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        (".", ""),
        ("Cluster.Local.", "cluster.local"),
        ("0/25.2.0.192.in-addr.arpa", "0/25.2.0.192.in-addr.arpa"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("_tcp.example", "_tcp.example"),
    ],
)
def test_valid_zones_still_parse(text: str, zone: str, tmp_path: Path) -> None:
    path = tmp_path / "corefile.yaml"
    path.write_text(block().replace("zones: ['.']", f"zones: ['{text}']"))
    assert load(str(path)).servers[0].zones == (zone,)


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    """Rejecting duplicate keys leaves YAML merges alone: a key beside ``<<`` overrides the merged one."""
    path = tmp_path / "corefile.yaml"
    path.write_text(
        "servers:\n"
        "  - zones: [a.test]\n    forward: &f {to: ['127.0.0.1'], max_fails: 3}\n"
        "  - zones: [b.test]\n    forward: {<<: *f, max_fails: 5}\n"
    )
    assert [b.forward.max_fails for b in load(str(path)).servers] == [3, 5]


def test_long_keys_alike_at_both_ends_are_not_duplicates(tmp_path: Path) -> None:
    """Keys are compared as written, not as shortened for messages."""
    path = tmp_path / "corefile.yaml"
    a, b = "k" * 200 + "a" + "k" * 200, "k" * 200 + "b" + "k" * 200
    path.write_text(block(f"{a}: 1", f"{b}: 2"))
    check_message(load_error(path), str(path), f"servers[0].{key_name(a)}", "one of the keys")


def test_every_case_id_is_unique() -> None:
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))


# -- the file itself ----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    check_message(load_error(path), str(path), "", "a readable config file (No such file or directory)")


def test_directory_as_path(tmp_path: Path) -> None:
    check_message(load_error(tmp_path), str(tmp_path), "", "a readable config file (Is a directory)")


def test_path_through_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    path = tmp_path / "plain" / "corefile.yaml"
    check_message(load_error(path), str(path), "", "a readable config file (Not a directory)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "corefile.yaml"
    path.write_text(block())
    path.chmod(0)
    check_message(load_error(path), str(path), "", "a readable config file (Permission denied)")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "corefile.yaml"
    path.write_bytes(block().encode() + b"    # caf\xe9 latin-1\n")
    check_message(load_error(path), str(path), "", "UTF-8 text (invalid byte at line 4")


def test_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "corefile.yaml"
    with open(path, "w") as f:
        f.write(block())
        for _ in range(40_000):
            f.write("#" * 99 + "\n")  # ~4 MB of comments: no config is that big
    check_message(load_error(path), str(path), "", "a config file of at most")


def test_fifo_is_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "corefile.yaml"
    os.mkfifo(path)
    check_message(load_error(path), str(path), "", "a regular file")


def test_alias_bomb_gives_a_short_message_quickly(tmp_path: Path) -> None:
    """Nested aliases expand to 10**8 items when printed; the message shows only the start."""
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    path = tmp_path / "corefile.yaml"
    path.write_text("servers:\n  - [" + ", ".join(levels) + "]\n")
    start = time.monotonic()
    msg = load_error(path)
    assert time.monotonic() - start < 5
    check_message(msg, str(path), "servers[0]", "a mapping")


def test_long_value_is_shortened_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "corefile.yaml"
    path.write_text(block(f"listen: '{'1' * 5000}'"))
    check_message(load_error(path), str(path), "servers[0].listen", ADDR)


# -- the real process ---------------------------------------------------------------------------


def run_twistd(config: Path) -> subprocess.CompletedProcess[str]:
    cmd = [*TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(config)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        pytest.param(forward("max_fails: -1"), "servers[0].forward.max_fails", "a whole number from 0 to 1000",
                     id="bad-value"),
        pytest.param("servers:\n  - forward: [127.0.0.1\n", "", "valid YAML at line 3", id="yaml-syntax"),
        pytest.param(None, "", "a readable config file (No such file or directory)", id="missing-file"),
    ],
)
def test_twistd_exits_non_zero_with_one_clear_line(text: str | None, key: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "corefile.yaml"
    if text is not None:
        path.write_text(text)
    proc = run_twistd(path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "invalid config:" in line]
    assert len(lines) == 1, out
    assert out.strip() == lines[0], out  # that line alone: no usage text around it
    msg = lines[0].split("invalid config: ", 1)[1]
    check_message(msg, str(path), key, expected)
