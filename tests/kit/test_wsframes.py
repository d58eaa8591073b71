"""Reading and writing the direct tunnel's simple frames in place (visiona.kit.wsframes)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from visiona.kit.wsframes import binary_head, read_client_frames


def client_frame(payload: bytes, opcode: Opcode = Opcode.BINARY, *, fin: bool = True) -> bytes:
    """A frame as a client sends it (masked), serialised by websockets itself."""
    return Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])


def read_all(data: bytes, limit: int | None = None) -> tuple[list[bytes], int, bool]:
    got: list[bytes] = []

    def deliver(payload: bytes) -> bool:
        got.append(payload)
        return True

    consumed, simple = read_client_frames(data, limit, deliver)
    return got, consumed, simple


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
def test_the_head_is_what_websockets_writes_for_an_unmasked_binary_frame(size: int) -> None:
    payload = bytes(size)
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])
    assert binary_head(size) + payload == expected


def test_frames_of_each_length_encoding_are_unmasked_in_order() -> None:
    payloads = [b"", b"ping", bytes(range(256)) * 300, b"x" * 125, b"y" * 126]
    data = b"".join(client_frame(p) for p in payloads)
    got, consumed, simple = read_all(data)
    assert got == payloads
    assert (consumed, simple) == (len(data), True)


def test_an_incomplete_frame_is_left_whole_at_every_cut() -> None:
    first, second = client_frame(b"a" * 200), client_frame(b"b" * 70_000)
    data = first + second
    for cut in [*range(1, 12), len(first) - 1, len(first) + 1, len(first) + 9, len(data) - 1]:
        got, consumed, simple = read_all(data[:cut])
        assert simple
        assert consumed == (len(first) if cut >= len(first) else 0)
        assert got == ([b"a" * 200] if cut >= len(first) else [])


@pytest.mark.parametrize(
    "foreign",
    [
        client_frame(b"hi", Opcode.PING),  # a control frame
        client_frame(b"part", fin=False),  # a fragment
        Frame(Opcode.BINARY, b"plain").serialize(mask=False, extensions=[]),  # unmasked
        bytes([0xC2]) + client_frame(b"z")[1:],  # RSV1 (compressed)
    ],
)
def test_anything_but_a_whole_masked_binary_frame_stops_the_read_at_its_start(
    foreign: bytes,
) -> None:
    head = client_frame(b"before")
    got, consumed, simple = read_all(head + foreign + client_frame(b"after"))
    assert got == [b"before"]
    assert (consumed, simple) == (len(head), False)


def test_a_frame_over_the_limit_is_left_to_the_full_parser() -> None:
    got, consumed, simple = read_all(client_frame(b"x" * 11), limit=10)
    assert (got, consumed, simple) == ([], 0, False)
    assert read_all(client_frame(b"x" * 10), limit=10)[0] == [b"x" * 10]


def test_the_reader_stops_after_a_frame_when_told() -> None:
    data = client_frame(b"one") + client_frame(b"two")
    got: list[bytes] = []

    def deliver(payload: bytes) -> bool:
        got.append(payload)
        return False

    assert read_client_frames(data, None, deliver) == (len(client_frame(b"one")), False)
    assert got == [b"one"]
