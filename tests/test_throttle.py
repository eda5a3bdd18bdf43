"""The failed-login delay: grows per client (IPv4 address, IPv6 /64), resets after a quiet
spell."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailplan.runtime.decide import throttle
from mailplan.runtime.decide.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_delay_doubles_per_failure_up_to_the_longest() -> None:
    limiter = Throttle(Clock())
    assert limiter.delay("192.0.2.1") == 0.0
    delays = [limiter.failed("192.0.2.1") for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_each_client_ip_has_its_own_count() -> None:
    limiter = Throttle(Clock())
    limiter.failed("192.0.2.1")
    limiter.failed("192.0.2.1")
    assert limiter.failed("192.0.2.2") == 1.0
    assert limiter.delay("192.0.2.1") == 2.0


def test_an_ipv6_client_is_its_slash_64() -> None:
    limiter = Throttle(Clock())
    limiter.failed("2001:db8:1:2::1")
    assert limiter.failed("2001:db8:1:2:ffff:ffff:ffff:fffe") == 2.0  # the same /64
    assert limiter.failed("2001:db8:1:3::1") == 1.0  # the next /64 is another client
    assert limiter.delay("2001:db8:1:2::abcd") == 2.0


def test_an_ipv4_mapped_address_counts_as_its_ipv4() -> None:
    limiter = Throttle(Clock())
    limiter.failed("::ffff:192.0.2.1")
    assert limiter.failed("192.0.2.1") == 2.0
    assert limiter.failed("192.0.2.2") == 1.0


def test_a_name_that_is_no_ip_is_counted_as_it_is() -> None:
    limiter = Throttle(Clock())
    limiter.failed("?")
    assert limiter.delay("?") == 1.0


def test_a_quiet_spell_forgets_the_failures() -> None:
    clock = Clock()
    limiter = Throttle(clock)
    limiter.failed("192.0.2.1")
    limiter.failed("192.0.2.1")
    clock.now += throttle.FORGET + 1
    assert limiter.delay("192.0.2.1") == 0.0
    assert limiter.failed("192.0.2.1") == 1.0


def test_the_table_stays_bounded() -> None:
    limiter = Throttle(Clock())
    for n in range(throttle.MAX_CLIENTS + 5):
        limiter.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(limiter.records) == throttle.MAX_CLIENTS
    assert limiter.delay("10.0.0.0") == 0.0  # the oldest went first


def test_checks_take_turns_after_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three checks at once from one client: one at a time, each after the delay that
    the failures before it made; another client does not wait."""
    monkeypatch.setattr(throttle, "FIRST", 0.05)
    limiter = Throttle()
    order: list[tuple[str, float]] = []

    async def check(ip: str, fails: bool) -> float:
        async with limiter.turn(ip) as waited:
            order.append((ip, round(waited, 2)))
            await asyncio.sleep(0.01)  # the password check
            if fails:
                limiter.failed(ip)
        return waited

    async def scenario() -> list[float]:
        started = time.monotonic()
        waits = await asyncio.gather(
            check("192.0.2.1", True), check("192.0.2.1", True), check("192.0.2.1", False)
        )
        other = await check("192.0.2.2", False)
        assert other < 0.05
        assert time.monotonic() - started >= 0.05 + 0.1  # 0, then 0.05, then 0.1 s
        return waits

    first, second, third = asyncio.run(scenario())
    assert first < 0.05
    assert second >= 0.05  # the first check's failure made the second wait
    assert third >= 0.05 + 0.1  # it waited its turn, then twice the delay
    assert [ip for ip, _ in order] == ["192.0.2.1"] * 3 + ["192.0.2.2"]
    assert limiter._turns == {}  # nothing kept once no check waits
