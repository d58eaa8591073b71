"""The agent's allow rules, target normalisation, config file and busy parsing (no network)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from visiona.agent import credentials
from visiona.agent.busy import header_value, probe_verdict
from visiona.agent.policy import (
    Policy,
    PolicyError,
    RefusedError,
    Rule,
    build_policy,
    canonical_target,
    load_config,
    normalise_target,
)
from visiona.cli import app as cli


def test_a_rule_matches_its_method_and_glob_only() -> None:
    rule = Rule.parse("get /v1/*")
    assert str(rule) == "GET /v1/*"
    assert rule.matches("GET", "/v1/models")
    assert rule.matches("GET", "/v1/a/b/c")
    assert not rule.matches("GET", "/v1")
    assert not rule.matches("POST", "/v1/models")
    assert not rule.matches("GET", "/v10/x")
    exact = Rule.parse("POST /v1/inference")
    assert exact.matches("POST", "/v1/inference")
    assert not exact.matches("POST", "/v1/inference/x")
    anything = Rule.parse("* /health?")
    assert anything.matches("DELETE", "/healthz")
    assert not anything.matches("GET", "/health")
    literal = Rule.parse("GET /a.b+[c]")
    assert literal.matches("GET", "/a.b+[c]")
    assert not literal.matches("GET", "/aXb+[c]")


@pytest.mark.parametrize("text", ["GET", "GET /a /b", "G3T /a", "GET a/b", "", "GET\t"])
def test_a_malformed_rule_is_refused_with_its_text(text: str) -> None:
    with pytest.raises(PolicyError):
        Rule.parse(text)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/v1/models", "/v1/models", b""),
        (b"/v1//models", "/v1/models", b""),
        (b"//v1/./models/", "/v1/models/", b""),
        (b"/v1/a/../models?x=1&y=%2e", "/v1/models", b"x=1&y=%2e"),
        (b"/v1/%2e%2e/admin", "/admin", b""),
        (b"/v1/%2E%2E/%2E/x", "/x", b""),
        (b"/v1%2fmodels", "/v1/models", b""),
        (b"/caf%C3%A9", "/caf\u00e9", b""),
        (b"/", "/", b""),
        (b"/a/..", "/", b""),
    ],
)
def test_targets_are_decoded_and_collapsed_before_matching(
    target: bytes, path: str, query: bytes
) -> None:
    assert normalise_target(target) == (path, query)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/..", 403),
        (b"/v1/../../etc/passwd", 403),
        (b"/%2e%2e/x", 403),
        (b"http://elsewhere/v1", 403),
        (b"*", 403),
        (b"/a%00b", 400),
        (b"/a%0d%0aX: y", 400),
        (b"/%ff", 400),
    ],
)
def test_a_target_escaping_the_root_or_malformed_is_refused(target: bytes, status: int) -> None:
    with pytest.raises(RefusedError) as caught:
        normalise_target(target)
    assert caught.value.status == status


def test_check_forwards_an_allowed_request_line_canonically() -> None:
    policy = build_policy(["GET /v1/*", "POST /v1/inference"])
    assert policy.filtering
    assert policy.check(b"GET /v1//a/../b%20c?q=%2F HTTP/1.1") == b"GET /v1/b%20c?q=%2F HTTP/1.1"
    assert policy.check(b"post /v1/inference HTTP/1.1") == b"POST /v1/inference HTTP/1.1"
    for line in (b"GET /v1/../admin HTTP/1.1", b"DELETE /v1/a HTTP/1.1", b"GET /admin HTTP/1.1"):
        with pytest.raises(RefusedError) as caught:
            policy.check(line)
        assert (caught.value.status, caught.value.code) == (403, "forbidden_by_agent")


def test_visiona_paths_are_never_forwarded_even_when_a_rule_allows_them() -> None:
    policy = build_policy(["* /*"])
    for line in (
        b"GET /visiona/models/x HTTP/1.1",
        b"PUT /ViSiOnA/x HTTP/1.1",
        b"GET /a/../visiona HTTP/1.1",
    ):
        with pytest.raises(RefusedError):
            policy.check(line)
    assert policy.check(b"GET /visionary HTTP/1.1") == b"GET /visionary HTTP/1.1"


@pytest.mark.parametrize("line", [b"GET /a", b"GET /a HTTP/1.1 extra", b"G\xffT /a HTTP/1.1"])
def test_a_bad_request_line_is_a_400(line: bytes) -> None:
    with pytest.raises(RefusedError) as caught:
        build_policy(["* /*"]).check(line)
    assert caught.value.status == 400


def test_no_rule_means_no_filtering_and_describe_says_so() -> None:
    assert not Policy().filtering
    assert Policy().describe() == {"allow": [], "deploy": True, "allow_ports": []}
    assert build_policy(["GET /x"], deploy=False).describe() == {
        "allow": ["GET /x"],
        "deploy": False,
        "allow_ports": [],
    }


def test_no_port_is_allowed_by_default_and_listed_ports_are() -> None:
    assert not Policy().allows_port(22)
    policy = build_policy([], ports=[5900, 22, "22"])
    assert policy.allows_port(22)
    assert policy.allows_port(5900)
    assert not policy.allows_port(23)
    assert policy.describe()["allow_ports"] == [22, 5900]
    assert not policy.filtering  # ports do not filter HTTP streams


@pytest.mark.parametrize("port", [0, 65536, -1, "ssh"])
def test_a_port_outside_1_to_65535_is_refused(port: int | str) -> None:
    with pytest.raises(PolicyError, match="1 to 65535"):
        build_policy([], ports=[port])


def test_the_config_file_is_toml_with_known_keys_only(tmp_path: Path) -> None:
    good = tmp_path / "agent.toml"
    good.write_text(
        'allow = ["GET /v1/*", "POST /v1/inference"]\ndeploy = false\n'
        'busy_probe = "http://127.0.0.1:9/busy"\nbusy_header = true\n'
    )
    data = load_config(good)
    assert data["allow"] == ["GET /v1/*", "POST /v1/inference"]
    assert data["deploy"] is False
    ports = tmp_path / "ports.toml"
    ports.write_text("allow_ports = [22, 5900]\n")
    assert load_config(ports)["allow_ports"] == [22, 5900]
    for text, word in [
        ("allow = 'GET /x'", "list"),
        ("allow = [1]", "list"),
        ("deploy = 'no'", "deploy"),
        ("colour = 1", "unknown"),
        ("allow = [", "TOML"),
        ("allow_ports = 22", "allow_ports"),
        ("allow_ports = ['22']", "allow_ports"),
        ("allow_ports = [true]", "allow_ports"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(PolicyError, match=word):
            load_config(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_the_busy_header_is_read_from_a_response_head() -> None:
    assert header_value(b"HTTP/1.1 200 OK\r\nX-Visiona-Busy: 1\r\n\r\nbody") is True
    assert header_value(b"HTTP/1.1 200 OK\r\nx-visiona-busy:  false \r\n\r\n") is False
    assert header_value(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nX-Visiona-Busy: 1") is None
    assert header_value(b"HTTP/1.1 200 OK\r\nX-Visiona-Busy: maybe\r\n\r\n") is None


def test_the_busy_probe_answer_is_read_from_status_header_or_body() -> None:
    request = httpx.Request("GET", "http://probe")
    assert probe_verdict(httpx.Response(503, request=request)) is True
    assert probe_verdict(httpx.Response(429, request=request)) is True
    assert probe_verdict(httpx.Response(200, request=request, json={"busy": True})) is True
    assert probe_verdict(httpx.Response(200, request=request, json={"busy": False})) is False
    assert probe_verdict(httpx.Response(204, request=request)) is False
    assert (
        probe_verdict(httpx.Response(200, request=request, headers={"X-Visiona-Busy": "1"})) is True
    )
    assert probe_verdict(httpx.Response(500, request=request)) is None


def test_install_service_writes_the_policy_into_the_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = tmp_path / "s.json"
    credentials.store(
        session, credentials.Credentials("http://127.0.0.1:9", "dev", "vst_x", "2099-01-01")
    )
    config = tmp_path / "agent.toml"
    config.write_text('allow = ["GET /v1/*"]\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    args = ["agent", "install-service", "--forward", "127.0.0.1:1", "--session-file", str(session)]
    done = CliRunner().invoke(
        cli,
        [
            *args,
            "--config", str(config), "--allow", "POST /v1/x", "--no-deploy",
            "--allow-port", "22",
        ],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    unit = (tmp_path / "xdg" / "systemd" / "user" / "visiona-agent.service").read_text()
    assert "--allow-port 22" in unit
    assert f"--config {config.resolve()}" in unit
    assert "--allow 'POST /v1/x'" in unit
    assert "--no-deploy" in unit
    bad = CliRunner().invoke(cli, [*args, "--allow", "nonsense"])
    assert bad.exit_code == 2


@pytest.mark.parametrize(
    ("target", "path", "forwarded"),
    [
        (b"/v1/models/a.b?x=1&y=2", "/v1/models/a.b", b"/v1/models/a.b?x=1&y=2"),
        (b"/", "/", b"/"),
        (b"/v1/", "/v1/", b"/v1/"),
        (b"/.well-known/x", "/.well-known/x", b"/.well-known/x"),
        (b"/a/./b", "/a/b", b"/a/b"),
        (b"//a", "/a", b"/a"),
        (b"/a%41", "/aA", b"/aA"),
        (b"/a b", "/a b", b"/a%20b"),
    ],
)
def test_a_plain_target_is_forwarded_untouched_and_any_other_canonically(
    target: bytes, path: str, forwarded: bytes
) -> None:
    assert canonical_target(target) == (path, forwarded)
