"""Reading a Corefile (CoreDNS's configuration file) into kubedns's config objects.

``--config`` takes a Corefile as well as the YAML mirror: :func:`is_corefile` tells them apart
by their content (a YAML config is a mapping with ``servers:``; a Corefile starts with server
block keys, a snippet or an ``import``), and by the file name when the content says nothing.
:func:`parse_corefile_config` parses (:mod:`.parser`), re-shapes into the YAML's dict
(:mod:`.mapping`) and runs the YAML's own validation, translating its errors back to
``file:line``; both syntaxes therefore give equal :class:`~kubedns.config.Config` objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kubedns.configbase import ConfigError
from kubedns.corefile.lexer import CorefileSyntaxError
from kubedns.corefile.mapping import SUPPORTED, map_corefile, translate
from kubedns.corefile.parser import Corefile, parse_corefile

if TYPE_CHECKING:
    from kubedns.config import Config

__all__ = [
    "SUPPORTED",
    "CorefileSyntaxError",
    "is_corefile",
    "parse_corefile",
    "parse_corefile_config",
    "sources_text",
]

_YAML_START = re.compile(r"(---|%YAML|\{(?![$%])|\[|[A-Za-z_][\w-]*\s*:(\s|$)|-\s)")


def is_corefile(text: str, path: str) -> bool:
    """Whether ``text`` is a Corefile, by its first line that is not blank or a comment: YAML
    starts with a ``key:``, ``-``, ``{`` or ``---``; a Corefile with server block keys and ``{``,
    a snippet or an ``import``.  A ``.yaml``/``.yml`` file is YAML unless it plainly is a
    Corefile; any other file is a Corefile unless it plainly is YAML."""
    yaml_name = path.lower().endswith((".yaml", ".yml"))
    for line in text.splitlines():
        s = line.strip().lstrip("\ufeff")
        if not s or s.startswith("#"):
            continue
        if _YAML_START.match(s):
            return False
        code = re.sub(r"\s#.*$", "", s).rstrip()
        return not yaml_name or code.endswith("{") or code.startswith(("import ", "("))
    return not yaml_name


def _canonical(corefile: Corefile) -> str:
    """The main file's text, then every imported file and what each glob matched: what reload
    hashes.  A Corefile without imports is just its text (its digest is the file's)."""
    parts = [corefile.sources[0][1] if corefile.sources else ""]
    parts += [f"\0import {name}\n{text}" for name, text in corefile.sources[1:]]
    parts += [f"\0glob {pattern}\n" + "\n".join(matches) for pattern, matches in corefile.globs]
    return "".join(parts)


def sources_text(text: str, path: str, environ: Mapping[str, str] | None = None) -> str:
    """:func:`_canonical` of the Corefile ``path`` holding ``text``; a Corefile that does not parse
    gives its text and the error, so that fixing it is a change too."""
    try:
        return _canonical(parse_corefile(path, text, environ))
    except ConfigError as e:
        return f"{text}\0error {e}"


def parse_corefile_config(text: str, path: str, environ: Mapping[str, str] | None = None) -> Config:
    """The validated :class:`~kubedns.config.Config` of the Corefile ``path`` holding ``text``."""
    from kubedns.config import parse_data

    corefile = parse_corefile(path, text, environ)
    data, table = map_corefile(corefile)
    try:
        return parse_data(data, path, _canonical(corefile))
    except CorefileSyntaxError:
        raise
    except ConfigError as e:
        raise translate(e, table) from None
