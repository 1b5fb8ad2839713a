"""The per-sender ordering buffer (conat._intake), pure: property tests with hypothesis."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from conat import Message
from conat._intake import Intake

# An arrival: (sender index, chunked?, completes ok?), in arrival order; then an order of completion.
arrivals = st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.booleans()), max_size=40)


@given(arrivals, st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_per_sender_order_and_no_waiting_on_others(items: list[tuple[int, bool, bool]], rnd) -> None:
    loop = asyncio.new_event_loop()
    try:
        out: list[str] = []
        dropped: list[str] = []
        intake: Intake

        def ready() -> None:
            while (item := intake.pop()) is not None:
                msg = item if isinstance(item, Message) else item.result()
                out.append(msg.subject)

        intake = Intake(ready, lambda f: dropped.append(getattr(f, "name", "?")))
        futures: list[tuple[asyncio.Future[Message], str, bool]] = []
        arrived_while_blocked: dict[str, bool] = {}
        for n, (sender, chunked, ok) in enumerate(items):
            name = f"{sender}:{n}"
            blocked = intake.waits_for(str(sender))
            arrived_while_blocked[name] = blocked
            if chunked:
                future: asyncio.Future[Message] = loop.create_future()
                future.name = name  # type: ignore[attr-defined]
                futures.append((future, name, ok))
                intake.put(future, str(sender))
            else:
                intake.put(Message(name, "", b"", None), str(sender))
                # A plain message whose sender has nothing arriving is delivered at once.
                assert (name in out) is not blocked
        rnd.shuffle(futures)
        for future, name, ok in futures:
            if ok:
                future.set_result(Message(name, "", b"", None))
            else:
                future.set_exception(RuntimeError("sender gone"))
            loop.run_until_complete(asyncio.sleep(0))  # run the done callbacks
        # Nothing is lost: every item was delivered or (a failed chunked one) dropped, once.
        expected = {f"{s}:{n}" for n, (s, chunked, ok) in enumerate(items) if ok or not chunked}
        assert sorted(out) == sorted(expected) and len(out) == len(set(out))
        assert sorted(dropped) == sorted(f"{s}:{n}" for n, (s, c, ok) in enumerate(items) if c and not ok)
        assert len(intake) == 0
        # Each sender's messages are delivered in the order they arrived.
        for sender in range(4):
            mine = [int(name.split(":")[1]) for name in out if name.startswith(f"{sender}:")]
            assert mine == sorted(mine)
    finally:
        loop.close()


def test_clear_returns_everything_held() -> None:
    loop = asyncio.new_event_loop()
    try:
        intake = Intake(lambda: None)
        pending: asyncio.Future[Message] = loop.create_future()
        intake.put(pending, "a")
        intake.put(Message("behind", "", b"", None), "a")
        intake.put(Message("free", "", b"", None), None)
        assert len(intake) == 3 and intake.ready == 1
        assert len(intake.clear()) == 3 and len(intake) == 0
        pending.cancel()
    finally:
        loop.close()
