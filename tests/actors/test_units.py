"""Pure parts of the runtime: the activation state table, mailboxes, subject/key mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import Actor, ActorDefinitionError, ActorError, IllegalTransition, State
from actors._activation import _TRANSITIONS
from actors._mailbox import Mailbox

_EVENTS = sorted({event for _, event in _TRANSITIONS})


def test_transition_table_is_a_lifecycle() -> None:
    # every state can reach INACTIVE again, and ACTIVE is reachable only through ACTIVATING
    assert _TRANSITIONS[(State.INACTIVE, "activate")] is State.ACTIVATING
    assert _TRANSITIONS[(State.ACTIVATING, "activated")] is State.ACTIVE
    assert {target for (source, _), target in _TRANSITIONS.items() if source is State.ACTIVE} == {
        State.PASSIVATING,
        State.INACTIVE,
    }
    assert all(t is not State.ACTIVE for (s, _), t in _TRANSITIONS.items() if s is not State.ACTIVATING)


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", _EVENTS)
def test_illegal_transitions_raise(state: State, event: str) -> None:
    from actors._activation import Activation

    act = Activation.__new__(Activation)
    act.key, act.state = "k", state
    if (state, event) in _TRANSITIONS:
        act._move(event)
        assert act.state is _TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalTransition, match=f"{event!r} is illegal in state {state.value}") as e:
            act._move(event)
        assert act.state is state
        # a branch of the error tree with a stable code and its fields, not a bare RuntimeError
        assert isinstance(e.value, ActorError)
        assert (e.value.code, e.value.key, e.value.state, e.value.event) == (
            "illegal-transition",
            "k",
            state.value,
            event,
        )


@given(st.lists(st.sampled_from(["msg", "internal", "get"]), max_size=200), st.integers(1, 8))
def test_mailbox_caps_messages_not_runtime_turns(ops: list[str], cap: int) -> None:
    box: Mailbox[int] = Mailbox("k", cap)
    model: list[tuple[int, bool]] = []
    for n, op in enumerate(ops):
        if op == "msg":
            accepted = box.put(n)
            assert accepted == (sum(1 for _, counted in model if counted) < cap)
            if accepted:
                model.append((n, True))
        elif op == "internal":
            box.put_internal(n)
            model.append((n, False))
        elif model:
            assert box.get() == model.pop(0)[0]
    stats = box.statistics()
    assert stats.buffered == sum(1 for _, counted in model if counted) <= cap
    assert len(box) == len(model)
    assert stats.received == ops.count("msg") == stats.buffered + stats.processed + stats.dropped


def test_key_mapping_for_several_wildcards_and_a_tail() -> None:
    class Store(Actor, subject="persist.*.x.*.>"):
        pass

    spec = Store.spec()
    assert spec.keyed
    assert spec.key_of("persist.project-1.x.db.a.b") == "project-1.db"
    assert spec.subject_for("project-1.db", tail="a.b") == "persist.project-1.x.db.a.b"
    with pytest.raises(ActorDefinitionError, match="tail"):
        spec.subject_for("project-1.db")
    with pytest.raises(ActorDefinitionError, match="bad key"):
        spec.subject_for("project 1.db", tail="a")


def test_unkeyed_actor_has_one_key() -> None:
    class Single(Actor, subject="single.service"):
        pass

    assert not Single.spec().keyed
    assert Single.spec().key_of("single.service") == ""
    assert Single.spec().subject_for() == "single.service"


def test_lifecycle_hooks_are_not_endpoints() -> None:
    from conat._service import rpc_methods

    class Svc(Actor, subject="svc.*"):
        async def work(self) -> None: ...

    assert set(rpc_methods(Svc)) == {"work"}


def test_an_unbound_actor_cannot_be_started() -> None:
    class Abstract(Actor):
        pass

    with pytest.raises(ActorDefinitionError, match="not bound to a subject"):
        Abstract.spec()


def test_a_subclass_with_options_keeps_the_parents_binding() -> None:
    class Base(Actor, subject="base.*", idle=5.0, max_buffer=7):
        pass

    class Child(Base, max_buffer=9):
        pass

    class Same(Base):
        pass

    child = Child.spec()
    assert (child.subject, child.idle, child.max_buffer, child.name) == ("base.*", 5.0, 9, "Child")
    assert child.dead_letter == "deadletter.Child"
    assert Same.spec() is Base.spec()
    with pytest.raises(ActorDefinitionError, match="max_bufer"):

        class Typo(Base, max_bufer=3):  # type: ignore[call-arg]
            pass
