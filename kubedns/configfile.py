"""The config file as a file: its bytes, its YAML, the paths it names, its digest for reload.

Kept apart from :mod:`kubedns.config`, which holds the records and what each key means: what is
here knows nothing of the schema.  It is how a file becomes Python data with errors that name a
line (PyYAML's loader made strict: no duplicate keys, no scalar it cannot convert, no device or
1 GB file read by mistake), how a relative path in it is found, and what reload hashes to see a
change.  The Corefile reader (:mod:`kubedns.corefile`) uses the same byte checks through
:func:`kubedns.config.load`.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import yaml

from kubedns.configbase import ConfigError, key_name, short_repr

__all__ = ["MAX_CONFIG_BYTES", "check_duplicate_keys", "file_digest", "read_text", "read_yaml", "resolve_path"]

MAX_CONFIG_BYTES = 1 << 20  # a Corefile mirror is a few KB; more is a wrong path, not a config


def read_text(path: str) -> str:
    """The text of the config file ``path``; a missing or unreadable file is a :class:`ConfigError`.

    Only a regular file of at most 1 MiB of UTF-8 is read: a FIFO or a device (``/dev/zero``)
    named by mistake would otherwise block the start or read until memory runs out.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):  # open() names a directory
            raise ConfigError(path, "", "a regular file (not a device, pipe or socket)", has_found=False)
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(path, "", f"a readable config file ({e.strerror or e})", has_found=False) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, "", f"a config file of at most {MAX_CONFIG_BYTES >> 20} MiB", has_found=False)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.end]
        raise ConfigError(path, "", f"UTF-8 text (invalid byte at line {line}: {bad!r})", has_found=False) from None
    return text


def resolve_path(config_path: str, p: str) -> str:
    """Relative paths are taken from the config file's folder, else from the working directory."""
    if os.path.isabs(p):
        return p
    beside = os.path.join(os.path.dirname(os.path.abspath(config_path)), p)
    return beside if os.path.exists(beside) or not os.path.exists(p) else os.path.abspath(p)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with a scalar it cannot convert (``2001-13-45``, ``!!int abc``,
    ``!!bool maybe``) reported as a YAML error at its line instead of a bare ValueError/KeyError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as e:
            kind = str(node.tag).rsplit(":", 1)[-1]
            why = f" ({e})" if isinstance(e, ValueError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{short_repr(node.value)} is not a valid {kind}{why}", node.start_mark
            ) from None


def check_duplicate_keys(root: yaml.Node, path: str) -> None:
    """YAML keys are unique, but PyYAML keeps the last of two silently: a block with ``forward``
    twice would drop the first without a word.  Reject it naming the key path and both lines."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()  # aliases share nodes: visit each once
    while stack:
        node, key = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for k, v in node.value:
                raw = str(k.value) if isinstance(k, yaml.ScalarNode) else None
                name = None if raw is None else key_name(raw)
                child = key if name is None else (f"{key}.{name}" if key else name)
                if raw is not None and k.tag != _MERGE_TAG:
                    line = k.start_mark.line + 1
                    if (k.tag, raw) in first:
                        raise ConfigError(
                            path, child, f"each key once in a mapping (line {line} repeats line {first[(k.tag, raw)]})",
                            has_found=False,
                        )
                    first[(k.tag, raw)] = line
                stack.append((v, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, f"{key}[{i}]") for i, v in enumerate(node.value))


def read_yaml(text: str, path: str) -> Any:
    """The YAML document; any YAML problem is a one-line :class:`ConfigError` naming the line."""
    loader = None
    try:
        loader = _Loader(text)  # checks the characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        check_duplicate_keys(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(e.problem or e.context or e).split())
        raise ConfigError(path, "", f"valid YAML{where} ({problem})", has_found=False) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, most control characters)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        code = ord(e.character) if isinstance(e.character, str) else int(e.character)
        raise ConfigError(
            path, "", f"valid YAML at line {line}, column {column} (character #x{code:04x}: {e.reason})",
            has_found=False,
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(path, "", f"valid YAML ({' '.join(str(e).split())})", has_found=False) from None
    except RecursionError:
        raise ConfigError(path, "", "valid YAML nested less deeply", has_found=False) from None
    finally:
        if loader is not None:
            loader.dispose()


def file_digest(path: str) -> str:
    """What reload compares: the file's SHA-256, and for a Corefile that of every file it imports
    too (and what each glob matched), so an edit to an imported file is a change.  Equal to the
    digest of :attr:`kubedns.config.Config.raw_text` for the config loaded from the same files.  OSError if the
    file itself cannot be read."""
    import hashlib

    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    from kubedns.corefile import is_corefile, sources_text

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return hashlib.sha256(data).hexdigest()
    if is_corefile(text, path):
        return hashlib.sha256(sources_text(text, path).encode()).hexdigest()
    return hashlib.sha256(data).hexdigest()
