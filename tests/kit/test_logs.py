"""Log formats: JSON lines carry the request id; text lines too."""

from __future__ import annotations

import json
import logging

import pytest

from visiona.kit.logs import JsonFormatter, configure_logging, request_id_var


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
