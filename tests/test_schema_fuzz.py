"""The config validator holds up against any input: it never raises, and its answers are sound."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.schema import (
    ConfigError,
    ValidationResult,
    dump_config,
    example_config,
    example_config_text,
    validate_config,
    validate_config_data,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = st.sampled_from(["smtp", "http"])
JARGON = re.compile(r"Input should|type=|pydantic|internal error|Value error|\[key\]")
FIXTURE_TEXTS = [
    p.read_text() for p in sorted((Path(__file__).parent / "fixtures").glob("logto_*"))
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "587", "********", "a\r\nb", "SignIn", "text/html", "TLSv1.2"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def assert_sound(result: ValidationResult, text: str | bytes) -> None:
    """Check that a result is well-formed for the text it was given."""
    assert isinstance(result, ValidationResult)
    lines = text.split(b"\n") if isinstance(text, bytes) else text.split("\n")
    for error in result.errors:
        assert isinstance(error, ConfigError)
        assert isinstance(error.path, str) and isinstance(error.message, str) and error.message
        assert 1 <= error.line <= len(lines), error
        assert 1 <= error.column <= len(lines[error.line - 1]) + 1, error
        assert not JARGON.search(error.message), error
    assert all(isinstance(notice, str) for notice in result.notices)
    assert (result.data is None) == bool(result.errors)
    if result.ok:
        assert isinstance(result.data, dict)
        again = validate_config(kind_of(result), dump_config(result.data))
        assert again.ok, again.errors
        assert again.data == result.data


def kind_of(result: ValidationResult) -> str:
    assert result.data is not None
    return "http" if "endpoint" in result.data else "smtp"


def check_text(kind: str, text: str | bytes) -> ValidationResult:
    result = validate_config(kind, text)
    assert_sound(result, text)
    return result


def check_data(kind: str, data: Any) -> ValidationResult:
    result = validate_config_data(kind, data)
    try:
        dumped = json.dumps(data, indent=2, ensure_ascii=False)
    except ValueError:  # a huge integer: the error is at the start
        dumped = ""
    assert_sound(result, dumped)
    check_text(kind, dumped)
    return result


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Yield the path of every value inside a document, containers included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    changed = copy.deepcopy(document)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return changed


def removed(document: Any, path: tuple[Any, ...]) -> Any:
    changed = copy.deepcopy(document)
    node = changed
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return changed


@FUZZ
@given(kind=KINDS, text=st.text(max_size=200))
def test_any_text_gets_a_sound_answer(kind: str, text: str) -> None:
    check_text(kind, text)


@FUZZ
@given(kind=KINDS, data=st.binary(max_size=200))
def test_any_bytes_get_a_sound_answer(kind: str, data: bytes) -> None:
    check_text(kind, data)


@FUZZ
@given(kind=KINDS, value=json_values)
def test_any_json_value_gets_a_sound_answer(kind: str, value: Any) -> None:
    check_data(kind, value)
    check_text(kind, json.dumps(value))


SOURCES = [example_config_text("smtp"), example_config_text("http"), *FIXTURE_TEXTS]
# JSON's own characters, plus two that parse but are refused: an unpaired surrogate and NUL.
JSON_PIECES = st.sampled_from([*'{}[]",:\\ \n\t0123456789-+.eEtrufalsn', "\ud800", "\x00"])


@FUZZ
@given(
    source=st.sampled_from(SOURCES),
    kind=KINDS,
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 3), st.text(JSON_PIECES, max_size=3)),
        min_size=1,
        max_size=4,
    ),
)
def test_mangled_valid_json_gets_a_sound_answer(
    source: str, kind: str, edits: list[tuple[float, int, str]]
) -> None:
    text = source
    for where, deleted, inserted in edits:
        at = int(where * len(text))
        text = text[:at] + inserted + text[at + deleted :]
    check_text(kind, text)


EXAMPLES = {"smtp": example_config("smtp"), "http": example_config("http")}
EXAMPLE_PATHS = {kind: list(paths(doc))[1:] for kind, doc in EXAMPLES.items()}


@FUZZ
@given(data=st.data(), kind=KINDS, value=json_values)
def test_any_value_at_any_field_gets_a_sound_answer(
    data: st.DataObject, kind: str, value: Any
) -> None:
    path = data.draw(st.sampled_from(EXAMPLE_PATHS[kind]))
    check_data(kind, replaced(EXAMPLES[kind], path, value))


@FUZZ
@given(data=st.data(), kind=KINDS)
def test_removing_any_field_gets_a_sound_answer(data: st.DataObject, kind: str) -> None:
    path = data.draw(st.sampled_from(EXAMPLE_PATHS[kind]))
    check_data(kind, removed(EXAMPLES[kind], path))


TYPED_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**30,
    "",
    " ",
    "x",
    "a\r\nb",
    [],
    [1],
    {},
    {"a": 1},
]


def test_every_field_of_the_examples_survives_every_type() -> None:
    for kind, document in EXAMPLES.items():
        for path in EXAMPLE_PATHS[kind]:
            for value in TYPED_VALUES:
                check_data(kind, replaced(document, path, value))


@FUZZ
@given(kind=KINDS, text=st.text(max_size=60), path=st.text(max_size=20))
def test_locate_always_gives_a_position_in_the_text(kind: str, text: str, path: str) -> None:
    result = validate_config(kind, text)
    line, column = result.locate(path)

    assert 1 <= line <= text.count("\n") + 1
    assert column >= 1


@FUZZ
@given(depth=st.integers(1, 5000), opener=st.sampled_from(["[", '{"a":']))
def test_deep_nesting_never_raises(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    check_text("smtp", '{"tls": ' + opener * depth + "1" + closer * depth + "}")


@FUZZ
@given(
    source=st.sampled_from(SOURCES),
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 3), st.text(JSON_PIECES, max_size=3)),
        min_size=1,
        max_size=3,
    ),
)
def test_syntax_errors_are_located_where_json_loads_locates_them(
    source: str, edits: list[tuple[float, int, str]]
) -> None:
    text = source
    for where, deleted, inserted in edits:
        at = int(where * len(text))
        text = text[:at] + inserted + text[at + deleted :]
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        first = validate_config("smtp", text).errors[0]
        assert (first.line, first.column) == (exc.lineno, exc.colno)
