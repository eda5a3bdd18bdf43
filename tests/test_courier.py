"""The outbound SMTP client's own loop and thread (runtime/delivery/courier.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mailplan.runtime.delivery.courier import Courier


def test_work_runs_on_the_couriers_thread_and_returns_there() -> None:
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    async def run() -> tuple[str, str]:
        courier = Courier(type(asyncio.get_running_loop()))
        try:
            return await courier.run(where()), threading.current_thread().name
        finally:
            await courier.close()

    there, here = asyncio.run(run())
    assert there == "mailplan-courier"
    assert here != there


def test_an_exception_there_is_raised_here() -> None:
    async def fail() -> None:
        raise ValueError("no such host")

    async def run() -> None:
        courier = Courier(type(asyncio.get_running_loop()))
        try:
            await courier.run(fail())
        finally:
            await courier.close()

    with pytest.raises(ValueError, match="no such host"):
        asyncio.run(run())


def test_cancelling_the_caller_cancels_the_work_and_close_ends_the_rest() -> None:
    cancelled: list[str] = []

    async def wait(name: str) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def run() -> bool:
        courier = Courier(type(asyncio.get_running_loop()))
        caller = asyncio.create_task(courier.run(wait("cancelled")))
        asyncio.run_coroutine_threadsafe(wait("left running"), courier.loop)
        await asyncio.sleep(0.1)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await courier.close()
        return courier.loop.is_closed()

    assert asyncio.run(run())
    assert sorted(cancelled) == ["cancelled", "left running"]
