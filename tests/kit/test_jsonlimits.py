"""The nesting bound of hand-parsed JSON (the upload's ``labels`` field)."""

from __future__ import annotations

import pytest

from visiona.kit.jsonlimits import JsonTooDeepError, loads_bounded, nesting_depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ('["a", "b"]', 1),
        ('[{"a": [1]}]', 3),
        ('["[[[[", "]]]"]', 1),  # brackets inside strings do not count
        ('["\\"[[[", "x"]', 1),  # nor after an escaped quote
        ("[" * 10_000, 10_000),
    ],
)
def test_nesting_depth_skips_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_loads_bounded_parses_within_the_bound() -> None:
    assert loads_bounded('["a", ["b"]]', max_depth=2) == ["a", ["b"]]


def test_loads_bounded_refuses_deeper_documents_before_parsing() -> None:
    with pytest.raises(JsonTooDeepError):
        loads_bounded("[" * 100_000 + "]" * 100_000)
    with pytest.raises(JsonTooDeepError):
        loads_bounded("[[[]]]", max_depth=2)
