"""The wire format and the settings."""

from __future__ import annotations

import pytest

from visiona.yamux import Config, Flag, FrameType, GoAwayCode
from visiona.yamux.frames import HEADER_SIZE, decode_header, describe, encode_header


def test_header_is_twelve_big_endian_bytes_with_version_zero():
    raw = encode_header(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.ACK, 0x01020304, 0x0A0B0C0D)
    assert len(raw) == HEADER_SIZE
    assert raw == bytes.fromhex("00 01 0003 01020304 0a0b0c0d")


def test_header_round_trips():
    raw = encode_header(FrameType.DATA, Flag.FIN, 7, 65536)
    header = decode_header(raw)
    assert (header.version, header.type, header.flags, header.stream_id, header.length) == (
        0,
        FrameType.DATA,
        Flag.FIN,
        7,
        65536,
    )
    assert "DATA" in describe(header)


def test_constants_match_hashicorp():
    assert [int(t) for t in FrameType] == [0, 1, 2, 3]
    assert [int(f) for f in (Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST)] == [1, 2, 4, 8]
    assert [int(c) for c in GoAwayCode] == [0, 1, 2]


def test_default_config_follows_hashicorp():
    config = Config()
    assert config.max_stream_window == 256 * 1024
    assert config.accept_backlog == 256
    assert config.keepalive_interval == 30.0
    assert config.frame_limit == config.max_stream_window


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_stream_window": 1024},
        {"max_stream_window": 2**32},
        {"accept_backlog": 0},
        {"keepalive_interval": 0},
        {"open_timeout": -1},
        {"max_streams": 0},
        {"send_frame_size": 0},
        {"max_frame_size": 0},
    ],
)
def test_config_rejects_unworkable_settings(kwargs):
    with pytest.raises(ValueError, match="must"):
        Config(**kwargs)
