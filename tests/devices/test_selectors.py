"""The tag-selector parser: the Kubernetes syntax into a typed AST, and its 400 errors."""

from __future__ import annotations

import pytest

from visiona.devices.selectors import (
    MAX_LENGTH,
    MAX_REQUIREMENTS,
    MAX_VALUES,
    Equals,
    Exists,
    In,
    InvalidSelectorError,
    NotEquals,
    NotExists,
    NotIn,
    Requirement,
    parse,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("site=lab", [Equals("site", "lab")]),
        ("site==lab", [Equals("site", "lab")]),
        ("site!=lab", [NotEquals("site", "lab")]),
        ("chip in (kl520,kl720)", [In("chip", ("kl520", "kl720"))]),
        ("chip notin (kl520)", [NotIn("chip", ("kl520",))]),
        ("retired", [Exists("retired")]),
        ("!retired", [NotExists("retired")]),
        (
            "site=lab,chip in (kl520,kl720),!retired",
            [Equals("site", "lab"), In("chip", ("kl520", "kl720")), NotExists("retired")],
        ),
        (
            "  site = lab ,  chip  in  ( kl520 , kl720 ) , ! retired , room ",
            [
                Equals("site", "lab"),
                In("chip", ("kl520", "kl720")),
                NotExists("retired"),
                Exists("room"),
            ],
        ),
        ("chip in(kl520)", [In("chip", ("kl520",))]),
        ("acme.com/line=A-1.b_c", [Equals("acme.com/line", "A-1.b_c")]),
        ("x in (a,a,b)", [In("x", ("a", "b"))]),
        ("k=v,k!=w", [Equals("k", "v"), NotEquals("k", "w")]),
    ],
)
def test_good_selectors_parse_into_typed_requirements(
    text: str, expected: list[Requirement]
) -> None:
    assert list(parse(text).requirements) == expected


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_an_empty_selector_selects_everything(text: str) -> None:
    assert parse(text).requirements == ()


@pytest.mark.parametrize(
    "text",
    [
        "site=lab",
        "site!=lab",
        "chip in (kl520,kl720)",
        "chip notin (a)",
        "x",
        "!x",
        "a=b,!c,d in (e)",
    ],
)
def test_the_canonical_text_parses_back_to_the_same_selector(text: str) -> None:
    selector = parse(text)
    assert parse(str(selector)) == selector


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("site=", 5, "expected a value"),
        ("=lab", 0, "expected a key"),
        ("Site=lab", 0, "a tag key is made of"),
        ("site=lab,", 9, "expected a requirement after ','"),
        (",site=lab", 0, "expected a key"),
        ("site=lab,,x", 9, "expected a key"),
        ("chip in kl520", 8, "expected '('"),
        ("chip in ()", 9, "must not be empty"),
        ("chip in (a,b", 12, "expected ',' or ')'"),
        ("chip in (a b)", 11, "expected ',' or ')'"),
        ("chip within (a)", 5, "expected an operator"),
        ("site=lab=x", 8, "expected ',' or the end"),
        ("site=la b", 8, "expected ',' or the end"),
        ("site=-lab", 5, "a tag value is made of"),
        ("site=l@b", 5, "a tag value is made of"),
        ("!", 1, "expected a key"),
        ("!site=lab", 5, "expected ',' or the end"),
        ("site=(lab)", 5, "expected a value"),
        ("k" * 64 + "=v", 0, "at most 63 characters"),
        ("k=" + "v" * 64, 2, "at most 63 characters"),
        ("site)", 4, "expected an operator"),
    ],
)
def test_bad_selectors_are_a_400_with_the_position_and_the_reason(
    text: str, position: int, reason: str
) -> None:
    with pytest.raises(InvalidSelectorError) as caught:
        parse(text)
    err = caught.value
    assert err.status_code == 400
    assert err.code == "invalid_selector"
    assert err.position == position, err.message
    assert reason in err.reason, err.reason
    body = err.body()["error"]
    assert body["position"] == position
    assert body["reason"] == err.reason
    assert f"position {position}" in body["message"]


def test_the_bounds_hold() -> None:
    too_long = "a=b," * (MAX_LENGTH // 4) + "a=b"
    with pytest.raises(InvalidSelectorError, match="at most"):
        parse(too_long)
    many = ",".join(f"k{i}" for i in range(MAX_REQUIREMENTS + 1))
    with pytest.raises(InvalidSelectorError, match="requirements"):
        parse(many)
    wide = "k in (" + ",".join(f"v{i}" for i in range(MAX_VALUES + 1)) + ")"
    with pytest.raises(InvalidSelectorError, match="values"):
        parse(wide)
    assert len(parse(",".join(f"k{i}" for i in range(MAX_REQUIREMENTS))).requirements) == 32
