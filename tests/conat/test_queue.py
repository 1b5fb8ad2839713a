"""The one bounded queue (conat._queue), pure: per-sender order (hypothesis), bounds and their
counters, closing, and the consumer's waits."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conat import Message
from conat._queue import BoundedQueue, QueueStatistics

pytestmark = pytest.mark.anyio

# An arrival: (sender index, chunked?, completes ok?), in arrival order; then an order of completion.
arrivals = st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.booleans()), max_size=40)


@given(arrivals, st.randoms(use_true_random=False), st.booleans())
@settings(max_examples=200, deadline=None)
def test_per_sender_order_and_no_waiting_on_others(
    items: list[tuple[int, bool, bool]], rnd, delivering: bool
) -> None:
    """The same contract whether ready items are delivered at once or taken by a consumer."""
    loop = asyncio.new_event_loop()
    try:
        out: list[str] = []
        dropped: list[str] = []
        queue: BoundedQueue[Message] = BoundedQueue(
            1000,
            deliver=(lambda m: out.append(m.subject)) if delivering else None,
            on_drop=lambda f: dropped.append(getattr(f, "name", "?")),
        )

        def take() -> None:
            out.extend(m.subject for m in queue.pop_all())

        futures: list[tuple[asyncio.Future[Message], str, bool]] = []
        for n, (sender, chunked, ok) in enumerate(items):
            name = f"{sender}:{n}"
            blocked = any(f"{sender}:" in f.name and not f.done() for f, _, _ in futures)  # type: ignore[attr-defined]
            if chunked:
                future: asyncio.Future[Message] = loop.create_future()
                future.name = name  # type: ignore[attr-defined]
                futures.append((future, name, ok))
                assert queue.put(future, str(sender))
            else:
                assert queue.put(Message(name, "", b"", None), str(sender))
                take()
                # A plain message whose sender has nothing arriving is ready at once.
                assert (name in out) is not blocked
        rnd.shuffle(futures)
        for future, name, ok in futures:
            if ok:
                future.set_result(Message(name, "", b"", None))
            else:
                future.set_exception(RuntimeError("sender gone"))
            loop.run_until_complete(asyncio.sleep(0))  # run the done callbacks
            take()
        # Nothing is lost: every item was delivered or (a failed chunked one) dropped, once.
        expected = {f"{s}:{n}" for n, (s, chunked, ok) in enumerate(items) if ok or not chunked}
        assert sorted(out) == sorted(expected) and len(out) == len(set(out))
        failed = sorted(f"{s}:{n}" for n, (s, c, ok) in enumerate(items) if c and not ok)
        assert sorted(dropped) == failed
        assert queue.statistics() == QueueStatistics(0, 1000, len(items), len(out), 0, len(failed))
        # Each sender's messages are delivered in the order they arrived.
        for sender in range(4):
            mine = [int(name.split(":")[1]) for name in out if name.startswith(f"{sender}:")]
            assert mine == sorted(mine)
    finally:
        loop.close()


async def test_a_full_queue_refuses_and_counts_and_cancels_what_arrives() -> None:
    queue: BoundedQueue[int] = BoundedQueue(2)
    assert queue.put(1) and queue.put(2)
    arriving: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    assert not queue.put(3)
    assert not queue.put(arriving, "s")
    assert arriving.cancelled()
    assert queue.statistics() == QueueStatistics(2, 2, 4, 0, 2, 0)
    assert queue.pop() == 1
    assert queue.put(4)
    assert queue.pop_all() == [2, 4]


async def test_arriving_items_count_against_the_bound() -> None:
    queue: BoundedQueue[str] = BoundedQueue(2)
    loop = asyncio.get_running_loop()
    first: asyncio.Future[str] = loop.create_future()
    assert queue.put(first, "a") and queue.put("behind", "a")
    assert (len(queue), queue.ready) == (2, 0)
    assert not queue.put("other", "b")
    first.set_result("first")
    await asyncio.sleep(0)
    assert queue.pop_all() == ["first", "behind"]


async def test_close_yields_what_is_held_then_ends_or_raises() -> None:
    queue: BoundedQueue[int] = BoundedQueue(10)
    queue.put(1)
    queue.put(2)
    queue.close()
    assert not queue.put(3)  # closed: refused, not counted
    assert [i async for i in queue] == [1, 2]
    assert queue.statistics().received == 2

    failing: BoundedQueue[int] = BoundedQueue(10)
    failing.put(1)
    failing.close(LookupError("gone"))
    failing.close(ValueError("later"))  # the first error stays
    assert await anext(failing) == 1
    with pytest.raises(LookupError):
        await anext(failing)


async def test_the_consumer_waits_for_an_item_and_for_close() -> None:
    queue: BoundedQueue[int] = BoundedQueue(10)
    got = asyncio.ensure_future(anext(queue))
    await asyncio.sleep(0)
    assert not got.done()
    queue.put(7)
    assert await got == 7
    ended = asyncio.ensure_future(anext(queue))
    await asyncio.sleep(0)
    queue.close()
    with pytest.raises(StopAsyncIteration):
        await ended


async def test_a_closed_consumer_waiting_on_an_arriving_item_ends_when_it_fails() -> None:
    """The last item held fails after close: the consumer must end, not wait forever."""
    queue: BoundedQueue[str] = BoundedQueue(10, on_drop=lambda f: None)
    arriving: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    queue.put(arriving, "a")
    queue.close()
    reader = asyncio.ensure_future(anext(queue))
    await asyncio.sleep(0)
    assert not reader.done()
    arriving.set_exception(RuntimeError("sender gone"))
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 5)
    assert queue.statistics().failed == 1


async def test_a_waiter_failed_by_its_owner_is_replaced() -> None:
    queue: BoundedQueue[int] = BoundedQueue(10)
    first = queue.waiter()
    first.set_exception(TimeoutError())  # a deadline of the owner's
    with pytest.raises(TimeoutError):
        await first
    second = queue.waiter()
    assert second is not first and not second.done()
    queue.put(1)
    await second
    assert queue.waiter().done()  # something is ready: done at once


def test_clear_returns_everything_held() -> None:
    loop = asyncio.new_event_loop()
    try:
        queue: BoundedQueue[Message] = BoundedQueue(10)
        pending: asyncio.Future[Message] = loop.create_future()
        queue.put(pending, "a")
        queue.put(Message("behind", "", b"", None), "a")
        queue.put(Message("free", "", b"", None), None)
        assert len(queue) == 3 and queue.ready == 1
        assert len(queue.clear()) == 3 and len(queue) == 0
        pending.cancel()
    finally:
        loop.close()


def test_an_arriving_item_needs_its_sender_and_a_bound_of_one_or_more() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            BoundedQueue[int](10).put(loop.create_future())
        with pytest.raises(ValueError):
            BoundedQueue[int](0)
    finally:
        loop.close()
