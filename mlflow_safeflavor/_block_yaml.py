"""A reader for the block YAML that MLflow writes to MLmodel, giving exactly what SafeLoader gives.

MLflow writes MLmodel with ``yaml.safe_dump(default_flow_style=False)``: one ``key: value`` per
line, nested mappings indented, lists as ``- item`` lines (an item may be a mapping,
``- key: value`` with its other keys lined up below), long strings single-quoted and folded over
more-indented lines. :func:`load` reads that form line by line and raises :class:`NotBlock`
for anything else (comments, flow collections other than ``[]``/``{}``, anchors, tags, block
scalars, tabs, blank lines, control or non-ASCII characters, odd indentation); the caller then
parses the text with PyYAML as before. Scalars are resolved by PyYAML's own implicit resolvers
and built by SafeConstructor, so ``true``, ``1_000``, ``2026-12-05`` or ``1:30`` mean here what
they mean to ``yaml.safe_load``. tests/test_mlmodel_yaml.py compares the two on edge cases,
generated documents and mutated MLmodel files.

Why: PyYAML's C parser still builds a node object per scalar and resolves each in Python; on a
cold cache that cost ~0.3 ms of every model load, this reader ~0.2 ms less.
"""

from __future__ import annotations

import re
from typing import Any

from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

_RESOLVERS = Resolver.yaml_implicit_resolvers
_WILDCARD = tuple(_RESOLVERS.get(None, ()))
_CONSTRUCTOR = SafeConstructor()
# Plain scalars taken here: a letter, digit or '_' first (no indicator), then no character with a
# meaning in flow or block context; ': ' and a trailing ':' or space are refused separately.
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/+@ -]*")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+@-]*")
# Characters the reader never takes: controls but '\n' (PyYAML refuses most; tabs and CR change
# what whitespace means), DEL, '#' (comments), non-ASCII (checked with isascii()).
_REFUSED_CHARS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f#]")


class NotBlock(Exception):
    """The text is not in the block form this reader takes; parse it with PyYAML instead."""


def load(text: str) -> dict[str, Any]:
    """The mapping ``yaml.load(text, SafeLoader)`` returns, or :class:`NotBlock`."""
    if not text.endswith("\n") or not text.isascii() or _REFUSED_CHARS.search(text):
        raise NotBlock
    reader = _Reader(text[:-1].split("\n"))
    try:
        doc = reader.mapping(0)
    except RecursionError:
        raise NotBlock from None
    if reader.i != len(reader.lines):
        raise NotBlock
    return doc


def _scalar(text: str) -> Any:
    """A plain scalar as SafeLoader builds it: the first implicit resolver that matches picks the tag."""
    for tag, regexp in (*_RESOLVERS.get(text[0], ()), *_WILDCARD):
        if regexp.match(text):
            return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, ScalarNode(tag, text))
    return text


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _closing_quote(s: str) -> int:
    """Index of the first single quote in ``s`` that is not half of an escaped ``''``, or -1."""
    i = s.find("'")
    while i >= 0 and s[i + 1 : i + 2] == "'":
        i = s.find("'", i + 2)
    return i


class _Reader:
    def __init__(self, lines: list[str]) -> None:
        self.lines, self.i = lines, 0

    def _deeper(self, indent: int) -> bool:
        """The next line is indented more than ``indent``: after a finished value, not block YAML."""
        return self.i < len(self.lines) and _indent(self.lines[self.i]) > indent

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[Any, Any] = {}
        lines = self.lines
        while self.i < len(lines):
            line = lines[self.i]
            body = line[indent:]
            if line[:indent].strip(" ") or body[:1] in (" ", "-", ""):
                break  # less indented, a sequence item, or blank: not this mapping's
            colon = body.find(":")
            if colon <= 0 or not _KEY.fullmatch(body, 0, colon):
                raise NotBlock
            key = _scalar(body[:colon])
            rest = body[colon + 1 :]
            self.i += 1
            if not rest:
                value = self.block(indent)
            elif rest[0] == " " and rest[1:2] not in ("", " "):
                value = self.flow(rest[1:], indent)
            else:
                raise NotBlock
            out[key] = value
            if self._deeper(indent):
                raise NotBlock
        if not out:
            raise NotBlock
        return out

    def block(self, indent: int) -> Any:
        """The value of a ``key:`` line at ``indent``: a mapping or list below it, or null."""
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i]
        deeper = _indent(line)
        if deeper == len(line):
            raise NotBlock  # a blank line, or one of spaces only
        if deeper > indent:
            return self.sequence(deeper) if line[deeper] == "-" else self.mapping(deeper)
        if deeper == indent and line[deeper : deeper + 2] == "- ":
            return self.sequence(indent)  # PyYAML writes a mapping's list at the key's indentation
        return None

    def sequence(self, indent: int) -> list[Any]:
        out = []
        lines = self.lines
        while self.i < len(lines):
            line = lines[self.i]
            if _indent(line) != indent or line[indent : indent + 2] != "- ":
                break
            item = line[indent + 2 :]
            colon = item.find(":")
            if colon > 0 and item[colon + 1 : colon + 2] in ("", " ") and _KEY.fullmatch(item, 0, colon):
                # "- key: value": a mapping whose keys line up with this first one.
                lines[self.i] = " " * (indent + 2) + item
                out.append(self.mapping(indent + 2))
            else:
                self.i += 1
                out.append(self.flow(item, indent))
        if not out or self._deeper(indent):
            raise NotBlock
        return out

    def flow(self, text: str, indent: int) -> Any:
        """A scalar after ``key: `` or ``- `` (a single-quoted one may fold over more-indented lines)."""
        if not text:
            raise NotBlock
        first = text[0]
        if first == "'":
            return self.single_quoted(text[1:], indent)
        if first == '"':
            if len(text) < 2 or text[-1] != '"' or '"' in text[1:-1] or "\\" in text:
                raise NotBlock
            return text[1:-1]
        if text == "[]":
            return []
        if text == "{}":
            return {}
        if text[-1] in " :" or ": " in text or not _PLAIN.fullmatch(text):
            raise NotBlock
        return _scalar(text)

    def single_quoted(self, body: str, indent: int) -> str:
        """Fold as YAML does: spaces around a line break become one space; '' is a quote."""
        parts: list[str] = []
        while True:
            end = _closing_quote(body)
            if end >= 0:
                if body[end + 1 :]:
                    raise NotBlock
                parts.append(body[:end].lstrip(" ") if parts else body[:end])
                return " ".join(parts).replace("''", "'")
            parts.append(body.strip(" ") if parts else body.rstrip(" "))
            if not self._deeper(indent):
                raise NotBlock
            body = self.lines[self.i]
            self.i += 1
            if not body.strip(" "):
                raise NotBlock  # a line of spaces: YAML folds it to a line break
