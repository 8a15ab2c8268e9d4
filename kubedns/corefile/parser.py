"""Corefile structure: server blocks of directives, with ``import`` and snippets expanded.

The grammar is the one CoreDNS reads (its fork of the Caddyfile parser)::

    [SCHEME://]ZONE[:PORT] [[SCHEME://]ZONE[:PORT]]... {     # keys; "a, b" or a trailing comma too
        directive ARG... {                                   # arguments: the rest of the line
            option ARG...                                    # nested blocks, any depth
        }
    }
    (name) { ... }                                           # a snippet, kept for "import name"
    import PATTERN                                           # anywhere a line may start

``import`` replaces its line with the tokens of a snippet, or of every file the path or glob
matches (relative to the folder of the file holding the ``import``; a glob matching nothing is no
error, a missing plain file is).  At the top level the imported tokens are server blocks, inside
a block they are directives, as in CoreDNS.  An import that leads back to a file or snippet it
came through is refused naming the chain, where CoreDNS stops after 1000 expansions.

Every token keeps its file and line, so the mapping to config can name ``file:line`` for any
value.  The files read (with their contents) are kept in :attr:`Corefile.sources`, which is what
reload hashes: an edit to an imported file is a change too.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubedns.configbase import short_repr
from kubedns.corefile.lexer import CorefileSyntaxError, Token, tokenize

__all__ = ["Corefile", "Directive", "ServerBlockSyntax", "keys_text", "parse_corefile", "read_source"]

MAX_FILE_BYTES = 1 << 20  # as the YAML config: a Corefile is a few KB
MAX_EXPANSIONS = 1000  # imports expanded in one Corefile (CoreDNS's cap)
MAX_TOKENS = 200_000  # everything imported, together
MAX_DEPTH = 50  # nested blocks (CoreDNS's plugins use two levels)


@dataclass(slots=True)
class Directive:
    """One line of a block: a name, its arguments, and maybe a nested block of more lines."""

    name: Token
    args: list[Token]
    block: list[Directive] | None = None

    @property
    def text(self) -> str:
        return self.name.text

    def where(self) -> str:
        return f"{self.name.file}:{self.name.line}"


@dataclass(slots=True)
class ServerBlockSyntax:
    keys: list[Token]
    directives: list[Directive]


@dataclass(slots=True)
class Corefile:
    path: str
    blocks: list[ServerBlockSyntax]
    #: (file, text) of the main file and of every imported file, in the order read
    sources: list[tuple[str, str]] = field(default_factory=list)
    #: import patterns that were globs, with what they matched (a new match is a change too)
    globs: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)


def read_source(path: str, what: str = "Corefile") -> str:
    """A config file's text: a regular file of at most 1 MiB of UTF-8, else a one-line error."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError("a file, not a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("a regular file (not a device, pipe or socket)")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"a readable {what} ({e.strerror or e})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"a {what} of at most {MAX_FILE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"UTF-8 text (invalid byte at line {line}: {data[e.start:e.end]!r})") from None


class _Stream:
    """Tokens with a cursor; ``import`` lines are replaced by what they import as they are reached."""

    def __init__(self, parser: _Parser, tokens: list[Token]):
        self.p = parser
        self.tokens = tokens
        self.i = 0

    def _new_line(self, k: int) -> bool:
        if k == 0:
            return True
        a, b = self.tokens[k - 1], self.tokens[k]
        return a.file != b.file or a.line != b.line or a.expansion != b.expansion

    def _expand(self) -> None:
        """Expand every ``import`` line at the cursor (an import may import an import)."""
        while (
            self.i < len(self.tokens)
            and self.tokens[self.i].text == "import"
            and not self.tokens[self.i].quoted
            and self._new_line(self.i)
        ):
            tok = self.tokens[self.i]
            end = self.i + 1
            while end < len(self.tokens) and not self._new_line(end):
                end += 1
            args = self.tokens[self.i + 1 : end]
            if len(args) != 1:
                raise CorefileSyntaxError(tok.file, tok.line, f"import: expected one file, glob or snippet name, got {len(args)} arguments")
            self.tokens[self.i : end] = self.p.imported(tok, args[0])

    def peek(self) -> Token | None:
        self._expand()
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self) -> Token | None:
        tok = self.peek()
        if tok is not None:
            self.i += 1
        return tok

    def at_new_line(self) -> bool:
        """Whether the token at the cursor starts a line (after any import is expanded)."""
        return self.peek() is not None and self._new_line(self.i)


class _Parser:
    def __init__(self, path: str, environ: Mapping[str, str] | None):
        self.path = path
        self.environ = environ
        self.snippets: dict[str, list[Token]] = {}
        self.snippet_where: dict[str, str] = {}
        self.expansions = 0
        self.expansion_ids = 0
        self.total_tokens = 0
        self.sources: list[tuple[str, str]] = []
        self.globs: list[tuple[str, tuple[str, ...]]] = []

    # -- files and imports ------------------------------------------------------------------
    def lex_file(self, file: str, via: tuple[str, ...], at: Token | None) -> list[Token]:
        try:
            text = read_source(file, "Corefile" if at is None else "file to import")
        except ValueError as e:
            if at is None:
                raise CorefileSyntaxError(file, 0, f"expected {e}") from None
            raise CorefileSyntaxError(at.file, at.line, f"import: {file}: expected {e}") from None
        self.sources.append((file, text))
        toks = tokenize(text, file, self.environ)
        self._count(at or Token("", file, 1), len(toks))
        if via:
            self.expansion_ids += 1
            toks = [Token(t.text, t.file, t.line, t.quoted, via, self.expansion_ids) for t in toks]
        return toks

    def _count(self, at: Token, n: int) -> None:
        """Bound what imports can make of a small file (a snippet imported 1000 times)."""
        self.total_tokens += n
        if self.total_tokens > MAX_TOKENS:
            raise CorefileSyntaxError(at.file, at.line, f"import: expected at most {MAX_TOKENS} tokens in all, imports included")

    def imported(self, at: Token, arg: Token) -> list[Token]:
        pattern = arg.text
        if not pattern:
            raise CorefileSyntaxError(at.file, at.line, "import: expected a file, glob or snippet name, got ''")
        self.expansions += 1
        if self.expansions > MAX_EXPANSIONS:
            raise CorefileSyntaxError(at.file, at.line, f"import: expected at most {MAX_EXPANSIONS} imports in all")
        chain = (*at.via, at.file)
        if pattern in self.snippets:
            key = f"({pattern})"
            if key in at.via:
                raise CorefileSyntaxError(at.file, at.line, f"import: expected no import cycle, got {' -> '.join((*at.via, key))}")
            self.expansion_ids += 1
            via, n = (*at.via, key), self.expansion_ids
            self._count(at, len(self.snippets[pattern]))
            return [Token(t.text, t.file, t.line, t.quoted, via, n) for t in self.snippets[pattern]]
        full = pattern if os.path.isabs(pattern) else os.path.join(os.path.dirname(at.file), pattern)
        is_glob = any(c in full for c in "*?[")
        if is_glob:
            if full.count("*") > 1 or full.count("?") > 1 or "[" in full:
                raise CorefileSyntaxError(
                    at.file, at.line, f"import: expected a glob with at most one '*' (and one '?'), got {pattern!r}"
                )
            matches = tuple(sorted(glob.glob(full, include_hidden=True)))
            self.globs.append((full, matches))
        else:
            if not os.path.lexists(full):
                hint = f" (no snippet ({pattern}) is defined before this line either)" if "/" not in pattern else ""
                raise CorefileSyntaxError(at.file, at.line, f"import: expected an existing file, got {pattern!r}{hint}")
            matches = (full,)
        out: list[Token] = []
        for m in matches:
            norm = os.path.normpath(m)
            if norm in (os.path.normpath(f) for f in chain):
                loop = " -> ".join((*chain, m))
                raise CorefileSyntaxError(at.file, at.line, f"import: expected no import cycle, got {loop}")
            if is_glob and os.path.isdir(m):
                continue  # a ConfigMap volume's ..data directories match "*" too
            out.extend(self.lex_file(m, chain, at))
        return out

    # -- structure --------------------------------------------------------------------------
    def parse(self, tokens: list[Token]) -> list[ServerBlockSyntax]:
        s = _Stream(self, tokens)
        blocks: list[ServerBlockSyntax] = []
        while s.peek() is not None:
            at = s.peek()
            keys = self.keys(s)
            if not keys:  # only empty tokens ("" or unset {$VAR}) before the end
                assert at is not None
                raise CorefileSyntaxError(at.file, at.line, "expected server block keys (zone[:port]), got ''")
            first = keys[0]
            opener = s.peek()
            if opener is not None and opener.is_open():
                s.next()
                if len(keys) == 1 and first.text.startswith("(") and first.text.endswith(")") and len(first.text) > 2:
                    self.snippet(s, first)
                    continue
                blocks.append(ServerBlockSyntax(keys, self.body(s, opener)))
                continue
            # CoreDNS reads a file with a single server block and no braces: the rest is its body
            if blocks:
                raise CorefileSyntaxError(first.file, first.line, f"expected '{{' after the server block keys {keys_text(keys)}")
            body = self.body(s, None)
            blocks.append(ServerBlockSyntax(keys, body))
        return blocks

    def keys(self, s: _Stream) -> list[Token]:
        """The keys of a server block: the tokens of its first line, and of the next ones while a
        key ends with ',' (``a, b``).  Stops before the ``{``."""
        keys: list[Token] = []
        expecting = False
        while True:
            tok = s.peek()
            if tok is None or tok.is_open():
                if expecting:
                    last = keys[-1]
                    raise CorefileSyntaxError(last.file, last.line, "expected another server block key after ','")
                if tok is not None and not keys:
                    raise CorefileSyntaxError(tok.file, tok.line, "expected server block keys (zone[:port]) before '{'")
                return keys
            if tok.is_close():
                raise CorefileSyntaxError(tok.file, tok.line, "expected a server block, got '}' with no block open")
            if keys and not expecting and s.at_new_line():
                return keys
            s.next()
            text = tok.text
            _no_glued_brace(tok)
            expecting = text.endswith(",")
            if expecting:
                text = text[:-1]
            if text:  # an empty token: "" or an unset {$VAR}
                keys.append(Token(text, tok.file, tok.line, tok.quoted, tok.via, tok.expansion))

    def snippet(self, s: _Stream, name_tok: Token) -> None:
        name = name_tok.text[1:-1]
        if name in self.snippets:
            raise CorefileSyntaxError(
                name_tok.file, name_tok.line, f"expected each snippet name once, got ({name}) again (first at {self.snippet_where[name]})"
            )
        depth = 1
        body: list[Token] = []
        # raw tokens: an import inside the snippet is expanded where the snippet is used
        while s.i < len(s.tokens):
            tok = s.tokens[s.i]
            s.i += 1
            if tok.is_open():
                depth += 1
            elif tok.is_close():
                depth -= 1
                if depth == 0:
                    self.snippets[name] = body
                    self.snippet_where[name] = f"{name_tok.file}:{name_tok.line}"
                    return
            body.append(tok)
        raise CorefileSyntaxError(name_tok.file, name_tok.line, f"expected a '}}' closing the snippet ({name}) opened here")

    def body(self, s: _Stream, opener: Token | None, depth: int = 0) -> list[Directive]:
        if depth > MAX_DEPTH and opener is not None:
            raise CorefileSyntaxError(opener.file, opener.line, f"expected blocks nested at most {MAX_DEPTH} deep")
        out: list[Directive] = []
        while True:
            tok = s.peek()
            if tok is None:
                if opener is not None:
                    raise CorefileSyntaxError(opener.file, opener.line, "expected a '}' closing the block opened here")
                return out
            if tok.is_close():
                if opener is None:
                    raise CorefileSyntaxError(tok.file, tok.line, "expected a directive, got '}' with no block open")
                s.next()
                return out
            if tok.is_open():
                raise CorefileSyntaxError(tok.file, tok.line, "expected a directive name, got '{'")
            s.next()
            _no_glued_brace(tok)
            args: list[Token] = []
            block = None
            while True:
                nxt = s.peek()
                if nxt is None or s.at_new_line() or nxt.is_close():
                    break
                s.next()
                _no_glued_brace(nxt)
                if nxt.is_open():
                    block = self.body(s, nxt, depth + 1)
                    after = s.peek()
                    if after is not None and not s.at_new_line() and not after.is_close():
                        raise CorefileSyntaxError(after.file, after.line, f"expected a new line after '}}', got {after.text!r}")
                    break
                args.append(nxt)
            out.append(Directive(tok, args, block))


def _no_glued_brace(tok: Token) -> None:
    """``example.org{`` is one token to CoreDNS too, which then fails far from the cause."""
    if not tok.quoted and len(tok.text) > 1 and tok.text.endswith("{") and "{$" not in tok.text:
        raise CorefileSyntaxError(tok.file, tok.line, f"expected a space before '{{', got {tok.text!r}")


def keys_text(keys: list[Token]) -> str:
    """Keys as an error shows them: one line, whatever was quoted into them."""
    return " ".join(k.text if k.text.isprintable() and " " not in k.text else short_repr(k.text) for k in keys)


def parse_corefile(path: str, text: str | None = None, environ: Mapping[str, str] | None = None) -> Corefile:
    """Read ``path`` (or parse ``text`` as if it were that file) into server blocks.

    Raises :class:`CorefileSyntaxError` (``file:line: expected ...``) for anything malformed.
    """
    p = _Parser(path, environ)
    if text is None:
        tokens = p.lex_file(path, (), None)
    else:
        p.sources.append((path, text))
        tokens = tokenize(text, path, environ)
    blocks = p.parse(tokens)
    return Corefile(path, blocks, p.sources, p.globs)

