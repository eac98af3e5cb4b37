"""Parse JSON text as json.loads does, remembering where every key and value sits in the text.

The config editor, the CLI and the API report errors as `line:column`, so the parser keeps a
source map from each path (`("templates", 2, "usageType")`) to offsets in the text. It is also
stricter than json.loads where strictness is friendlier: a duplicate key, NaN/Infinity, a
number too large to be meaningful, an unpaired surrogate or a NUL character in a string, and
nesting deeper than a config ever needs are reported instead of being silently accepted.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "JsonSyntaxError",
    "Path",
    "Problem",
    "SourceMap",
    "parent_path",
    "parse",
    "render_path",
]

Path = tuple[str | int, ...]

MAX_DEPTH = 64
# Python refuses int() on more than 4300 digits; nothing in a config needs a tenth of that.
MAX_INT_DIGITS = 4000

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SURROGATE = re.compile("[\ud800-\udfff]")

# json's own messages, in the words of this product.
_JSON_MESSAGES = {
    "Expecting value": "expected a value (a string, number, object, list, true, false or null)",
    "Unterminated string starting at": "unterminated string: a closing double quote is missing",
    "Invalid control character at": (
        "a control character (such as a raw line break or tab) inside a string; "
        "write it as \\n or \\t"
    ),
    "Invalid \\escape": "invalid escape sequence in a string (a backslash must be doubled: \\\\)",
    "Invalid \\uXXXX escape": "invalid \\u escape: it needs four hexadecimal digits",
}


class JsonSyntaxError(ValueError):
    """The text is not JSON that this parser accepts; `offset` points at the problem."""

    def __init__(self, message: str, offset: int, path: Path = ()) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.path = path


class _BadNumber(Exception):
    """A number literal that json.loads would accept but a config cannot use."""


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_INT_DIGITS:
        raise _BadNumber("this number has too many digits")
    return int(literal)


def _parse_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise _BadNumber("this number is too large")
    return number


def _parse_constant(literal: str) -> float:
    raise _BadNumber(f"{literal} is not allowed in JSON: write a number or null")


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)


def render_path(path: Path) -> str:
    """Return a path as people read it: `templates[2].usageType`, `""` for the root."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def parent_path(path: str) -> str:
    """Return the rendered path one level up (`a.b[2]` → `a.b` → `a` → ``)."""
    if path.endswith("]"):
        return path[: path.rfind("[")]
    return path[: path.rfind(".")] if "." in path else ""


@dataclass
class SourceMap:
    """Where each key and value of a parsed document starts in its text."""

    text: str
    values: dict[Path, int] = field(default_factory=dict)
    keys: dict[Path, int] = field(default_factory=dict)
    _newlines: list[int] | None = field(default=None, repr=False)
    _rendered: dict[str, Path] | None = field(default=None, repr=False)

    def line_column(self, offset: int) -> tuple[int, int]:
        """Return the 1-based (line, column) of an offset, counting lines as json does."""
        if self._newlines is None:
            self._newlines = [m.start() for m in re.finditer("\n", self.text)]
        line = bisect_right(self._newlines, offset - 1)
        start = self._newlines[line - 1] + 1 if line else 0
        return line + 1, offset - start + 1

    def offset(self, path: Path, *, at: str = "value") -> int:
        """Return the offset of a path's key (`at="key"`), value or parent object.

        A path that is not in the text (a default, a moved key) falls back to its nearest
        ancestor that is, then to the start of the text.
        """
        if at == "parent":
            path = path[:-1]
        elif at == "key" and path in self.keys:
            return self.keys[path]
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, 0)

    def position(self, path: Path, *, at: str = "value") -> tuple[int, int]:
        """Return the (line, column) of a path; see `offset`."""
        return self.line_column(self.offset(path, at=at))

    def alias(self, path: Path, existing: Path) -> None:
        """Let `path` be found where `existing` is (a key that validation moved)."""
        if existing in self.values:
            self.values[path] = self.values[existing]
            self.keys[path] = self.keys.get(existing, self.values[existing])
            self._rendered = None

    def locate(self, path: str) -> tuple[int, int]:
        """Return the (line, column) of a rendered path's key, or of its nearest ancestor."""
        if self._rendered is None:
            self._rendered = {render_path(p): p for p in self.values}
        while path not in self._rendered and path:
            path = parent_path(path)
        found = self._rendered.get(path)
        if found is None:
            return (1, 1)
        return self.position(found, at="key")


@dataclass
class Problem:
    """A value that parsed but is not acceptable (a duplicate key, a NUL character)."""

    path: Path
    offset: int
    message: str


class _Parser:
    def __init__(self, text: str, max_depth: int) -> None:
        self.text = text
        self.max_depth = max_depth
        self.source = SourceMap(text)
        self.problems: list[Problem] = []

    def skip(self, index: int) -> int:
        match = _WHITESPACE.match(self.text, index)
        return match.end() if match else index

    def fail(self, message: str, offset: int, path: Path) -> JsonSyntaxError:
        return JsonSyntaxError(message, offset, path)

    def value(self, index: int, path: Path, depth: int) -> tuple[Any, int]:
        char = self.text[index : index + 1]
        if char in ("{", "["):
            if depth >= self.max_depth:
                raise self.fail(
                    f"nesting too deep (more than {self.max_depth} levels of objects and lists)",
                    index,
                    path,
                )
            self.source.values[path] = index
            if char == "{":
                return self.object(index, path, depth + 1)
            return self.array(index, path, depth + 1)
        self.source.values[path] = index
        return self.scalar(index, path)

    def scalar(self, index: int, path: Path) -> tuple[Any, int]:
        try:
            value, end = _DECODER.raw_decode(self.text, index)
        except _BadNumber as exc:
            raise self.fail(str(exc), index, path) from None
        except json.JSONDecodeError as exc:
            raise self.fail(_friendly(exc.msg), exc.pos, path) from None
        if isinstance(value, str):
            self.check_string(value, index, path)
        return value, end

    def check_string(self, value: str, index: int, path: Path) -> None:
        # json.loads accepts both, but neither can be stored in PostgreSQL or sent by mail.
        if "\x00" in value:
            self.problems.append(
                Problem(path, index, "contains a NUL character (\\u0000), which is not allowed")
            )
        if _SURROGATE.search(value):
            self.problems.append(
                Problem(
                    path,
                    index,
                    "contains an unpaired surrogate (\\ud800-\\udfff), which is not valid text",
                )
            )

    def object(self, index: int, path: Path, depth: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        index = self.skip(index + 1)
        if self.text[index : index + 1] == "}":
            return result, index + 1
        comma = -1
        while True:
            if self.text[index : index + 1] == "}" and comma >= 0:
                raise self.fail(_TRAILING_COMMA.format("}"), comma, path)
            if self.text[index : index + 1] != '"':
                raise self.fail(_expected_key(self.text, index), index, path)
            key_offset = index
            key, index = self.scalar(index, path)
            child = (*path, key)
            if key in result:
                self.problems.append(
                    Problem(child, key_offset, "duplicate key: this key appears earlier too")
                )
            self.source.keys[child] = key_offset
            index = self.skip(index)
            if self.text[index : index + 1] != ":":
                raise self.fail("expected `:` after the key", index, child)
            index = self.skip(index + 1)
            result[key], index = self.value(index, child, depth)
            index = self.skip(index)
            char = self.text[index : index + 1]
            if char == "}":
                return result, index + 1
            if char != ",":
                raise self.fail("expected `,` or `}` after the value", index, path)
            comma, index = index, self.skip(index + 1)

    def array(self, index: int, path: Path, depth: int) -> tuple[list[Any], int]:
        result: list[Any] = []
        index = self.skip(index + 1)
        if self.text[index : index + 1] == "]":
            return result, index + 1
        comma = -1
        while True:
            if self.text[index : index + 1] == "]" and comma >= 0:
                raise self.fail(_TRAILING_COMMA.format("]"), comma, path)
            item, index = self.value(index, (*path, len(result)), depth)
            result.append(item)
            index = self.skip(index)
            char = self.text[index : index + 1]
            if char == "]":
                return result, index + 1
            if char != ",":
                raise self.fail("expected `,` or `]` after the item", index, path)
            comma, index = index, self.skip(index + 1)


def _friendly(message: str) -> str:
    for prefix, friendly in _JSON_MESSAGES.items():
        if message.startswith(prefix):
            return friendly
    return "not valid JSON here"


_TRAILING_COMMA = "a comma before `{}` is not allowed in JSON: remove it"


def _expected_key(text: str, index: int) -> str:
    char = text[index : index + 1]
    if char == "'":
        return "keys need double quotes in JSON, not single quotes"
    if not char:
        return "the text ends inside an object: a `}` is missing"
    return "expected a key in double quotes"


def parse(text: str, *, max_depth: int = MAX_DEPTH) -> tuple[Any, SourceMap, list[Problem]]:
    """Return (value, source map, problems) for a JSON text, or raise JsonSyntaxError."""
    parser = _Parser(text, max_depth)
    start = 1 if text.startswith("\ufeff") else 0  # a byte order mark from a Windows editor
    index = parser.skip(start)
    if index == len(text):
        raise JsonSyntaxError("the text is empty: expected a JSON object", index)
    value, index = parser.value(index, (), 0)
    index = parser.skip(index)
    if index != len(text):
        raise JsonSyntaxError("unexpected text after the end of the JSON document", index)
    return value, parser.source, parser.problems
