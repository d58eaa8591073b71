"""The WebSocket frames of a direct tunnel's steady state, read and written in place.

Once a tunnel runs on the direct path (:mod:`visiona.kit.websocket`), nearly every
frame is a whole binary message: from the agent masked, FIN set, no RSV bit; from the
server unmasked, with no extension negotiated. websockets' sans-I/O protocol reads each
through a generator chain and a ``Frame`` object, and writes each through a
``Frame.serialize``; for a keepalive that is most of the Python work of an idle tunnel.
This module reads and writes exactly those frames (RFC 6455 §5.2) and nothing else:
anything else (a control frame, a fragment, an RSV bit, an unmasked client frame, a
frame over the size limit) is "not simple", and the protocol hands it, and every byte
after it, back to websockets, whose checks and answers stay the only ones.

Unmasking uses websockets' own C ``apply_mask``.
"""

from __future__ import annotations

from collections.abc import Callable

from visiona.yamux.frames import Buffer

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

#: FIN + opcode 2 (binary), no RSV bit: the first byte of every simple frame.
_FIN_BINARY = 0x82
#: The MASK bit of the second byte: set on every frame a client sends.
_MASKED = 0x80
_LEN_16 = 126
_LEN_64 = 127

#: ``deliver(payload) -> True`` to go on reading, False to stop after this frame.
Deliver = Callable[[bytes], bool]


def binary_head(size: int) -> bytes:
    """The head of an unmasked FIN binary frame of ``size`` payload bytes (a server's)."""
    if size < _LEN_16:
        return bytes((_FIN_BINARY, size))
    if size < 1 << 16:
        return bytes((_FIN_BINARY, _LEN_16)) + size.to_bytes(2, "big")
    return bytes((_FIN_BINARY, _LEN_64)) + size.to_bytes(8, "big")


def read_client_frames(data: Buffer, limit: int | None, deliver: Deliver) -> tuple[int, bool]:
    """Deliver the unmasked payloads of the whole simple client frames at the start of
    ``data``; stop at the first frame that is incomplete or not simple.

    Returns ``(consumed, simple)``: the bytes consumed (whole frames only), and whether
    what follows them is (the start of) a simple frame — False when it is a frame the
    caller must hand to a full parser, or when ``deliver`` asked to stop.
    """
    view = memoryview(data)
    end = len(view)
    pos = 0
    while end - pos >= 2:
        if view[pos] != _FIN_BINARY:
            return pos, False
        second = view[pos + 1]
        if not second & _MASKED:
            return pos, False
        size = second & 0x7F
        head = pos + 2
        if size == _LEN_16:
            if end - head < 2:
                break
            size = int.from_bytes(view[head : head + 2], "big")
            head += 2
        elif size == _LEN_64:
            if end - head < 8:
                break
            size = int.from_bytes(view[head : head + 8], "big")
            head += 8
        if limit is not None and size > limit:
            return pos, False  # the full parser refuses it (close 1009)
        stop = head + 4 + size
        if stop > end:
            break
        payload = apply_mask(view[head + 4 : stop], bytes(view[head : head + 4]))
        pos = stop
        if not deliver(payload):
            return pos, False
    return pos, True
