"""The ``log`` and ``errors`` config sections: YAML nodes → frozen records (CoreDNS's *log* and
*errors* plugins).

Kept apart from :mod:`kubedns.ops.querylog` (which runs them) so the config loads without Twisted's
logger, and apart from :mod:`kubedns.config` to keep that module to the server block.  A Corefile
maps onto the same keys (:mod:`kubedns.corefile.mapping`): ``log [NAMES...] [FORMAT] { class
CLASSES... }`` becomes ``{names, format, classes}``, ``errors { consolidate DURATION REGEXP
[LEVEL] [show_first] }`` a list under ``consolidate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kubedns.configbase import Node

__all__ = ["COMBINED_FORMAT", "COMMON_FORMAT", "ConsolidateRule", "ErrorsConfig", "LEVELS", "LOG_CLASSES",
           "LogConfig", "parse_errors", "parse_log"]

#: CoreDNS's Common Log Format (its default) and the Combined one (with the query's opcode)
COMMON_FORMAT = '{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" {rcode} {>rflags} {rsize} {duration}'
COMBINED_FORMAT = COMMON_FORMAT + ' "{>opcode}"'
LOG_CLASSES = ("success", "denial", "error")
LEVELS = ("error", "warning", "info", "debug")
MAX_REGEXP = 10000  # CoreDNS's bound on a consolidate REGEXP


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``log``: which queries are logged and how."""

    #: "common" (CoreDNS's default), "combined", "json" (one JSON object per line, ours), or a
    #: format with CoreDNS's placeholders ({remote}, {name}, {>rflags}...; {common} and
    #: {combined} expand to those formats)
    format: str = "common"
    names: tuple[str, ...] = ()  # only names in these zones ("" is the root); (): every name
    classes: frozenset[str] = frozenset(LOG_CLASSES)  # success, denial, error (CoreDNS's "all": the three)


@dataclass(frozen=True, slots=True)
class ConsolidateRule:
    """``consolidate DURATION REGEXP [LEVEL] [show_first]``: errors whose text matches ``regexp``
    are counted for ``duration`` after the first, then one line says how many there were."""

    duration: float
    regexp: str
    level: str = "error"
    show_first: bool = False  # log the first matching error at once (and no summary for one alone)
    pattern: re.Pattern[str] = field(default=re.compile(""), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ErrorsConfig:
    """``errors``: failures (SERVFAIL) logged as ``plugin/errors: RCODE NAME TYPE: ERROR``."""

    #: without rules: repeats of one error text within this many seconds are counted and
    #: summed up in one line (0: every error is logged); with rules: 0
    consolidate: float = 10.0
    rules: tuple[ConsolidateRule, ...] = ()  # CoreDNS's consolidate lines, first match wins


def parse_log(node: Node) -> LogConfig:
    """``log:`` (empty or true), or ``{format, names, classes}``."""
    if node.value is None or node.value is True:
        return LogConfig()
    node.mapping({"format", "names", "classes"})
    fmt_node = node.get("format", "common")
    fmt = fmt_node.value
    if not (isinstance(fmt, str) and (fmt in ("common", "combined", "json") or "{" in fmt)):
        raise fmt_node.error('one of common | json | combined, or a format with placeholders like "{remote} {name}"')
    names = node.get("names", []).zones(allow_empty=True)
    classes_node = node.get("classes", [])
    if isinstance(classes_node.value, str):
        classes_node.value = [classes_node.value]
    classes: set[str] = set()
    for item in classes_node.items():
        classes.add(item.choice(("all", *LOG_CLASSES)))
    if not classes or "all" in classes:  # "all" means everything, whatever it is mixed with
        classes = set(LOG_CLASSES)
    return LogConfig(format=fmt, names=() if "" in names else names, classes=frozenset(classes))


def parse_errors(node: Node) -> ErrorsConfig:
    """``errors:`` (empty or true), ``{consolidate: DURATION}`` (repeats of one error text), or
    ``{consolidate: [{duration, regexp, level, show_first}, ...]}`` (CoreDNS's lines)."""
    if node.value is None or node.value is True:
        return ErrorsConfig()
    node.mapping({"consolidate"})
    cn = node.get("consolidate", 10.0)
    if not isinstance(cn.value, list):
        return ErrorsConfig(consolidate=cn.duration(0.0))
    rules = []
    for item in cn.items():
        item.mapping({"duration", "regexp", "level", "show_first"})
        rx_node = item.get("regexp")
        rx = rx_node.string()
        if len(rx) > MAX_REGEXP:
            raise rx_node.error(f"a regular expression of at most {MAX_REGEXP} characters", show=False)
        try:
            pattern = re.compile(rx)
        except re.error as e:
            raise rx_node.error(f"a regular expression ({e})") from None
        rules.append(ConsolidateRule(
            duration=item.get("duration").duration(0.001),
            regexp=rx,
            level=item.get("level", "error").choice(LEVELS),
            show_first=item.get("show_first", False).boolean(),
            pattern=pattern,
        ))
    return ErrorsConfig(consolidate=0.0, rules=tuple(rules))
