"""asyncio: waiting for a lock never blocks the event loop."""

import asyncio
import time

import pytest

import onlyone


def test_the_loop_keeps_ticking_while_acquire_async_waits(lock_dir, name):
    async def main():
        holder = onlyone.Lock(name, dir=lock_dir).acquire()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        asyncio.get_running_loop().call_later(0.5, holder.release)
        started = time.monotonic()
        async with onlyone.Lock(name, dir=lock_dir).acquire_async(timeout=10) as held:
            waited = time.monotonic() - started
            assert held.token == 2
        ticking.cancel()
        return ticks, waited

    ticks, waited = asyncio.run(main())
    assert waited >= 0.45
    # A blocked loop would not have ticked at all while waiting.
    assert ticks >= 20, ticks


def test_async_with_tries_once_and_awaiting_waits(lock_dir, name):
    async def main():
        lock = onlyone.Lock(name, dir=lock_dir)
        async with lock as held:
            with pytest.raises(onlyone.Held):
                async with onlyone.Lock(name, dir=lock_dir):
                    pass
            started = time.monotonic()
            with pytest.raises(onlyone.Held) as raised:
                await onlyone.Lock(name, dir=lock_dir).acquire_async(timeout=0.3)
            assert 0.2 <= time.monotonic() - started <= 0.6
            assert raised.value.holder.token == held.token
        guard = await lock.acquire_async(timeout=1)
        guard.release()

    asyncio.run(main())


def test_a_cancelled_wait_leaves_the_lock_alone(lock_dir, name):
    async def main():
        holder = onlyone.Lock(name, dir=lock_dir).acquire()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                onlyone.Lock(name, dir=lock_dir).acquire_async(), timeout=0.2
            )
        holder.release()
        # The cancelled waiter took nothing after the release.
        guard = onlyone.Lock(name, dir=lock_dir).acquire(blocking=False)
        guard.release()

    asyncio.run(main())
