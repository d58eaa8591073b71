"""The keepalive's timer: on a shared wall-clock grid, and silent while the peer speaks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.support.yamux import RawFactory, frame, read_frame
from visiona.yamux import Config
from visiona.yamux.frames import ACK, PING, SYN
from visiona.yamux.keepalive import Pings, _wheel_of, coalesced_deadline


@pytest.mark.parametrize(
    ("now", "delay", "wall", "expected"),
    [
        (100.0, 15.0, 1000.3, 100.0 + 15.7),  # 1015.3 -> 1016 on the 1 s grid
        (100.0, 15.0, 1000.0, 115.0),  # already on the grid
        (5.0, 0.2, 77.005, 5.0 + 0.215),  # 77.205 -> 77.22 on the 0.02 s grid
        (5.0, 30.0, 12.5, 5.0 + 30.5),  # the step never exceeds 1 s
    ],
)
def test_deadlines_round_up_to_the_wall_clock_grid(
    now: float, delay: float, wall: float, expected: float
):
    assert coalesced_deadline(now, delay, wall) == pytest.approx(expected)


def test_two_processes_with_synchronised_clocks_fire_at_the_same_instant():
    # different monotonic clocks, the same wall clock, different arming instants
    first = coalesced_deadline(10.0, 15.0, 5000.25) - 10.0 + 5000.25
    second = coalesced_deadline(99_999.0, 15.0, 5000.61) - 99_999.0 + 5000.61
    assert first == pytest.approx(second)
    assert first == pytest.approx(5016.0)


def test_a_deadline_is_never_earlier_than_its_delay():
    for tenth in range(100):
        wall = 1_000_000 + tenth / 100
        assert coalesced_deadline(0.0, 15.0, wall) >= 15.0
        assert coalesced_deadline(0.0, 15.0, wall) <= 16.0


async def test_keepalive_sends_no_ping_while_the_peer_speaks(make_raw: RawFactory):
    session, reader, writer = await make_raw(Config(enable_keepalive=False))
    answers = 0

    def answered() -> None:
        nonlocal answers
        answers += 1

    session.keep_alive(0.05, 1.0, on_miss=lambda _misses: True, on_answer=answered)
    header, _ = await asyncio.wait_for(read_frame(reader), 5)  # silent so far: a Ping
    assert (header.type, header.flags) == (PING, SYN)
    writer.write(frame(PING, ACK, 0, header.length))
    for _ in range(10):  # now the peer keeps talking (its own pings) more often than 0.05 s
        writer.write(frame(PING, SYN, 0, 7))
        header, _ = await asyncio.wait_for(read_frame(reader), 5)
        assert (header.type, header.flags, header.length) == (PING, ACK, 7)  # answers only
        await asyncio.sleep(0.02)
    assert answers >= 3  # each keepalive that saw traffic counted as an answer
    header, _ = await asyncio.wait_for(read_frame(reader), 5)  # silent again: it pings
    assert (header.type, header.flags) == (PING, SYN)
    assert not session.is_closed


async def test_the_keepalives_of_many_sessions_share_one_loop_timer_per_slot(
    caplog: pytest.LogCaptureFixture,
):
    loop = asyncio.get_running_loop()
    sent: list[int] = []

    def sender(number: int) -> Callable[[int], None]:
        def send(_ping_id: int) -> None:
            if number == 1:
                raise RuntimeError("this session's socket is broken")
            sent.append(number)

        return send

    pings = [Pings(loop, sender(number)) for number in range(100)]
    for each in pings:
        each.start_keepalive(0.2, 5.0, on_miss=lambda _misses: True)
    wheel = _wheel_of(loop)
    assert 1 <= len(wheel._timers) <= 2  # one per 0.02 s slot the arming loop spanned
    pings[0].close()  # a session closed before its slot: never pinged
    await asyncio.sleep(0.5)
    assert sorted(sent) == list(range(2, 100))  # one failing session stops no other
    assert "keepalive callback failed" in caplog.text
    for each in pings:
        each.close()
    assert not wheel._timers  # every slot left empty dropped its loop timer
