"""Log formats: JSON lines carry the request id; text lines too; no input forges a line."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from visiona.kit.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    escape_control,
    install_safe_records,
    request_id_var,
)


def test_json_formatter_emits_one_object_with_request_id() -> None:
    token = request_id_var.set("rid-1")
    try:
        record = logging.LogRecord("visiona.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
        record.request_id = request_id_var.get()
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    payload = json.loads(line)
    assert payload["message"] == "hello w"
    assert payload["request_id"] == "rid-1"
    assert payload["level"] == "INFO"


def test_configure_logging_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("INFO", "json")
        configure_logging("INFO", "json")
        ours = [h for h in root.handlers if getattr(h, "_visiona", False)]
        assert len(ours) == 1
        logging.getLogger("visiona.test").info("structured %s", "line")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(err)["message"] == "structured line"
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)


_HOSTILE = "a\rb\nc\x00d\x1b[31me\u2028f\u2029g\x85h\x7fi\tj"


def test_escape_control_writes_every_control_and_line_separator_as_an_escape() -> None:
    assert escape_control(_HOSTILE) == ("a\\rb\\nc\\x00d\\x1b[31me\\u2028f\\u2029g\\x85h\\x7fi\\tj")
    assert escape_control("plain /path?x=é") == "plain /path?x=é"


def _raise_forging() -> None:
    raise ValueError("bad\n2026-12-07 03:12:00,000 INFO visiona.access [fake] x")


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    install_safe_records()
    exc_info = None
    if exc:
        try:
            _raise_forging()
        except ValueError:
            exc_info = sys.exc_info()
    return logging.getLogRecordFactory()(
        "visiona.x", logging.INFO, __file__, 1, msg, args, exc_info
    )


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_hostile_argument_or_exception_never_starts_a_line_of_its_own(
    formatter: logging.Formatter,
) -> None:
    record = _record("GET %s", "/x" + _HOSTILE, exc=True)
    record.request_id = "-"
    line = formatter.format(record)
    for char in ("\r", "\x00", "\x1b", "\u2028", "\u2029", "\x85"):
        assert char not in line
    if isinstance(formatter, JsonFormatter):
        assert "\n" not in line
        payload = json.loads(line)
        assert payload["message"] == "GET /x" + escape_control(_HOSTILE)
        assert "\n2026-12-07" not in payload["exc"]
    else:
        first, *rest = line.split("\n")
        assert first.endswith("GET /x" + escape_control(_HOSTILE))
        assert rest
        assert all(part.startswith("  ") for part in rest)
