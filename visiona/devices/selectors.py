"""Tag selectors: the one parser of the Kubernetes label-selector syntax, and its AST.

Grammar (whitespace is allowed around every token)::

    selector    := requirement ("," requirement)*        -- comma means AND
    requirement := "!" KEY                               -- the device has no tag KEY
                 | KEY                                   -- the device has a tag KEY
                 | KEY ("=" | "==") VALUE                -- KEY equals VALUE
                 | KEY "!=" VALUE                        -- KEY absent or not VALUE
                 | KEY "in" "(" VALUE ("," VALUE)* ")"   -- KEY is one of the values
                 | KEY "notin" "(" VALUE ("," VALUE)* ")" -- KEY absent or none of them

KEY and VALUE follow the tag rules (:mod:`visiona.devices.tags`). As in Kubernetes,
``!=`` and ``notin`` also match devices without the key. An empty selector (only
whitespace) selects every device. Bounds: :data:`MAX_LENGTH` characters,
:data:`MAX_REQUIREMENTS` requirements, :data:`MAX_VALUES` values in one set.

:func:`parse` returns a :class:`Selector` of typed requirements or raises
:class:`InvalidSelectorError` (400 ``invalid_selector``) with the 0-based position in
the text and the reason. The SQL a selector becomes lives in
:mod:`visiona.devices.fleet_repository`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from visiona.devices.tags import key_problem, value_problem
from visiona.kit.errors import BadRequestError

MAX_LENGTH = 1024
MAX_REQUIREMENTS = 32
MAX_VALUES = 64


class InvalidSelectorError(BadRequestError):
    """A selector that does not parse: 400 with ``position`` (0-based) and ``reason``."""

    code = "invalid_selector"
    default_message = "The selector is not valid."

    def __init__(self, position: int, reason: str) -> None:
        """Refuse the selector at ``position`` (0-based character index) because of ``reason``."""
        super().__init__(f"Invalid selector at position {position}: {reason}.")
        self.position = position
        self.reason = reason

    def body(self) -> dict[str, Any]:
        """The error body, with ``position`` and ``reason``."""
        body = super().body()
        body["error"]["position"] = self.position
        body["error"]["reason"] = self.reason
        return body


@dataclass(frozen=True, slots=True)
class Exists:
    """``key``: the device has the tag."""

    key: str

    def __str__(self) -> str:
        """The canonical text."""
        return self.key


@dataclass(frozen=True, slots=True)
class NotExists:
    """``!key``: the device does not have the tag."""

    key: str

    def __str__(self) -> str:
        """The canonical text."""
        return f"!{self.key}"


@dataclass(frozen=True, slots=True)
class Equals:
    """``key=value`` (or ``key==value``)."""

    key: str
    value: str

    def __str__(self) -> str:
        """The canonical text."""
        return f"{self.key}={self.value}"


@dataclass(frozen=True, slots=True)
class NotEquals:
    """``key!=value``: the tag is absent or has another value."""

    key: str
    value: str

    def __str__(self) -> str:
        """The canonical text."""
        return f"{self.key}!={self.value}"


@dataclass(frozen=True, slots=True)
class In:
    """``key in (a,b)``: the tag has one of the values."""

    key: str
    values: tuple[str, ...]

    def __str__(self) -> str:
        """The canonical text."""
        return f"{self.key} in ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class NotIn:
    """``key notin (a,b)``: the tag is absent or has none of the values."""

    key: str
    values: tuple[str, ...]

    def __str__(self) -> str:
        """The canonical text."""
        return f"{self.key} notin ({','.join(self.values)})"


Requirement = Exists | NotExists | Equals | NotEquals | In | NotIn


@dataclass(frozen=True, slots=True)
class Selector:
    """Requirements that must all hold (an empty selector selects everything)."""

    requirements: tuple[Requirement, ...]

    def __str__(self) -> str:
        """The canonical text (parses back to an equal selector)."""
        return ",".join(str(r) for r in self.requirements)


# A key or value "word": any run of characters that are not syntax; the tag rules then
# say whether the word is a valid key or value (a precise reason, not "unexpected x").
_WORD = re.compile(r"[^\s,=!()]+")
_SPACE = re.compile(r"\s*")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, reason: str, at: int | None = None) -> InvalidSelectorError:
        return InvalidSelectorError(self.pos if at is None else at, reason)

    def skip_space(self) -> None:
        match = _SPACE.match(self.text, self.pos)
        self.pos = match.end() if match else self.pos

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def peek(self, literal: str) -> bool:
        self.skip_space()
        return self.text.startswith(literal, self.pos)

    def take(self, literal: str) -> bool:
        if self.peek(literal):
            self.pos += len(literal)
            return True
        return False

    def word(self, what: str) -> tuple[str, int]:
        """The next word and where it starts (``what``: "a key", "a value", ...)."""
        self.skip_space()
        match = _WORD.match(self.text, self.pos)
        if match is None:
            found = self.text[self.pos : self.pos + 1]
            raise self.fail(f"expected {what}, found {found!r}" if found else f"expected {what}")
        self.pos = match.end()
        return match.group(), match.start()

    def key(self) -> str:
        key, start = self.word("a key")
        problem = key_problem(key)
        if problem is not None:
            raise self.fail(problem, start)
        return key

    def value(self) -> str:
        value, start = self.word("a value")
        problem = value_problem(value)
        if problem is not None:
            raise self.fail(problem, start)
        return value

    def values(self) -> tuple[str, ...]:
        if not self.take("("):
            raise self.fail("expected '(' to open the set of values")
        found: list[str] = []
        while True:
            if self.peek(")") and not found:
                raise self.fail("a set of values must not be empty")
            found.append(self.value())
            if len(found) > MAX_VALUES:
                raise self.fail(f"a set has at most {MAX_VALUES} values")
            if self.take(")"):
                return tuple(dict.fromkeys(found))
            if not self.take(","):
                raise self.fail("expected ',' or ')' in the set of values")

    def requirement(self) -> Requirement:
        if self.take("!"):
            return NotExists(self.key())
        key = self.key()
        if self.take("!="):
            return NotEquals(key, self.value())
        if self.take("==") or self.take("="):
            return Equals(key, self.value())
        if self.at_end() or self.peek(","):
            return Exists(key)
        self.skip_space()
        match = _WORD.match(self.text, self.pos)
        operator = match.group() if match else ""
        if operator in {"in", "notin"}:
            self.pos += len(operator)
            values = self.values()
            return In(key, values) if operator == "in" else NotIn(key, values)
        found = operator or self.text[self.pos : self.pos + 1]
        raise self.fail(
            f"expected an operator (=, ==, !=, in, notin), ',' or the end, found {found!r}"
        )

    def selector(self) -> Selector:
        requirements: list[Requirement] = []
        if self.at_end():
            return Selector(())
        while True:
            requirements.append(self.requirement())
            if len(requirements) > MAX_REQUIREMENTS:
                raise self.fail(f"a selector has at most {MAX_REQUIREMENTS} requirements")
            if self.at_end():
                return Selector(tuple(requirements))
            if not self.take(","):
                found = self.text[self.pos : self.pos + 1]
                raise self.fail(f"expected ',' or the end, found {found!r}")
            if self.at_end():
                raise self.fail("expected a requirement after ','")


def parse(text: str) -> Selector:
    """Parse ``text`` (400 ``invalid_selector`` with position and reason when it does not)."""
    if len(text) > MAX_LENGTH:
        raise InvalidSelectorError(MAX_LENGTH, f"a selector has at most {MAX_LENGTH} characters")
    return _Parser(text).selector()
