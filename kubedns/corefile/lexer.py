"""Corefile tokens, read the way CoreDNS's Caddyfile lexer reads them.

A token is a run of non-space characters; a ``"`` or a backquote at the start of one starts a
quoted token that may hold spaces and newlines (``\\"`` is a quote inside ``"..."``, nothing else
is escaped), a ``#`` at the start of one comments out the rest of the line, and a backslash
before a newline joins the next line to this one.  Lines matter: a directive's arguments are the
tokens on its line, so every token keeps the file and line it starts on (an error names them).

``{$NAME}`` (and ``{%NAME%}``) inside a token is replaced by the environment variable's value
(empty if unset), as CoreDNS does, token by token: a value with spaces stays one token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kubedns.configbase import ConfigError

__all__ = ["Token", "substitute_env", "tokenize", "CorefileSyntaxError"]


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    file: str
    line: int
    quoted: bool = False
    #: files and snippets this token was imported through, outermost first (import cycles)
    via: tuple[str, ...] = ()
    #: which expansion of an import brought it (two imports of one snippet are two lines)
    expansion: int = 0

    def is_open(self) -> bool:
        return self.text == "{" and not self.quoted

    def is_close(self) -> bool:
        return self.text == "}" and not self.quoted


class CorefileSyntaxError(ConfigError):
    """A problem in a Corefile; ``str()`` is ``file:line: directive: what was expected``.

    A :class:`~kubedns.configbase.ConfigError`, so start-up and reload report it like any other.
    """

    def __init__(self, file: str, line: int, message: str):
        # one line whatever a quoted token held (names and labels show token text as written)
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        self.file = file
        self.line = line
        self.message = message
        self.path = f"{file}:{line}" if line > 0 else file
        self.key = ""
        self.expected = message
        ValueError.__init__(self, f"{self.path}: {message}")


_ENV = (re.compile(r"\{\$([^{}]+?)\}"), re.compile(r"\{%([^{}]+?)%\}"))


def substitute_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``{$NAME}`` and ``{%NAME%}`` replaced by the variable's value, or by nothing if unset."""
    if "{" not in text:
        return text
    env = os.environ if environ is None else environ
    for pattern in _ENV:
        text = pattern.sub(lambda m: env.get(m.group(1), ""), text)
    return text


def tokenize(text: str, file: str, environ: Mapping[str, str] | None = None) -> list[Token]:
    """Every token of ``text`` with its line; environment references substituted."""
    tokens: list[Token] = []
    line = 1
    skipped = 0  # lines joined by a backslash: the next token still counts as on this line
    i, n = 0, len(text)
    if text.startswith("\ufeff"):
        i = 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1 + skipped
            skipped = 0
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if ch == "\\" and i + 1 < n and text[i + 1] == "\n":  # line continuation between tokens
            skipped += 1
            i += 2
            continue
        start_line = line
        if ch in "\"`":
            quote = ch
            i += 1
            val: list[str] = []
            while True:
                if i >= n:
                    raise CorefileSyntaxError(file, start_line, f"expected a closing {quote} for the quoted text started here")
                c = text[i]
                if quote == '"' and c == "\\" and i + 1 < n:
                    if text[i + 1] == '"':
                        val.append('"')
                        i += 2
                        continue
                    val.append("\\")
                    i += 1
                    continue
                if c == quote:
                    i += 1
                    break
                if c == "\n":
                    line += 1 + skipped
                    skipped = 0
                val.append(c)
                i += 1
            tokens.append(Token(substitute_env("".join(val), environ), file, start_line, quoted=True))
            continue
        j = i
        while j < n and not text[j].isspace():
            if text[j] == "\\" and j + 1 < n and text[j + 1] == "\n":
                break
            j += 1
        raw = text[i:j]
        i = j
        value = substitute_env(raw, environ)
        # a brace that came out of an environment variable is text, not structure
        tokens.append(Token(value, file, start_line, quoted=value in ("{", "}") and value != raw))
    return tokens
