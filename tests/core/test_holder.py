"""Holder: a typed holder id that is still the plain string the wire and old callers use."""

from __future__ import annotations

import copy
import pickle
import threading
from typing import Any

import msgpack
import pytest

from lessor.holder import ANONYMOUS, Holder, bind_actor, current_holder, holder_receiver

KINDS = [
    (Holder.thread(12, 345, 6), "thread", "12:345:6", "thread:12:345:6"),
    (Holder.actor("urn:uuid:abc"), "actor", "urn:uuid:abc", "actor:urn:uuid:abc"),
    (Holder.worker("w.0", 4242), "worker", "w.0:4242", "worker:w.0:4242"),
    (ANONYMOUS, "anonymous", "", "anonymous"),
]


@pytest.mark.parametrize(("holder", "kind", "id_", "text"), KINDS)
def test_kind_and_id_are_set_when_made(holder: Holder, kind: str, id_: str, text: str) -> None:
    assert (holder.kind, holder.id) == (kind, id_)
    assert holder == text and text == holder
    assert str(holder) == text and type(str(holder)) is str


@pytest.mark.parametrize(("holder", "kind", "id_", "text"), KINDS)
def test_hashes_and_finds_entries_like_its_text(
    holder: Holder, kind: str, id_: str, text: str
) -> None:
    assert hash(holder) == hash(text)
    assert {text: 1}[holder] == 1
    assert {holder: 2}[text] == 2
    assert len({holder, text}) == 1
    assert holder != f"{text}x"


@pytest.mark.parametrize(("holder", "kind", "id_", "text"), KINDS)
def test_msgpack_carries_it_as_plain_text(holder: Holder, kind: str, id_: str, text: str) -> None:
    frame = msgpack.packb(holder, use_bin_type=True)
    assert frame == msgpack.packb(text, use_bin_type=True)
    back = msgpack.unpackb(frame, raw=False)
    assert type(back) is str
    assert back == holder  # what comes back over the wire still equals the Holder


@pytest.mark.parametrize(("holder", "kind", "id_", "text"), KINDS)
def test_copies_and_pickles_keep_the_kind(holder: Holder, kind: str, id_: str, text: str) -> None:
    for other in (copy.copy(holder), copy.deepcopy(holder), pickle.loads(pickle.dumps(holder))):
        assert type(other) is Holder
        assert (other.kind, other.id, str(other)) == (kind, id_, text)


@pytest.mark.parametrize(("holder", "kind", "id_", "text"), KINDS)
def test_parse_gives_back_the_same_holder(holder: Holder, kind: str, id_: str, text: str) -> None:
    parsed = Holder.parse(text)
    assert (parsed.kind, parsed.id) == (kind, id_)
    assert Holder.parse(holder) is holder


@pytest.mark.parametrize("text", ["h1", "", "worker", "worker:", "anonymous:x", "bogus:1"])
def test_parse_refuses_what_is_no_holder_id(text: str) -> None:
    with pytest.raises(ValueError):
        Holder.parse(text)


@pytest.mark.parametrize(
    ("kind", "id_"), [("bogus", "x"), ("worker", ""), ("thread", ""), ("anonymous", "x")]
)
def test_bad_kind_or_missing_id_is_refused(kind: Any, id_: str) -> None:
    with pytest.raises(ValueError):
        Holder(kind, id_)


def test_is_immutable() -> None:
    holder = Holder.worker("w", 1)
    with pytest.raises(AttributeError):
        holder.kind = "thread"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        holder.anything = 1  # type: ignore[attr-defined]
    assert holder.kind == "worker"


def in_thread(fn: Any) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]


def test_current_holder_is_a_cached_thread_holder() -> None:
    mine = current_holder()
    assert isinstance(mine, Holder) and mine.kind == "thread"
    assert current_holder() is mine  # cached: it is on every request
    other = in_thread(current_holder)
    assert isinstance(other, Holder) and other.kind == "thread" and other != mine


def test_bind_actor_makes_an_actor_holder() -> None:
    class Ref:
        actor_urn = "urn:uuid:bound"

        def tell(self, message: Any) -> None:  # pragma: no cover - not called here
            pass

    def bind() -> tuple[Holder, Holder, object]:
        ref = Ref()
        bound = bind_actor(ref)
        return bound, current_holder(), holder_receiver(bound) is ref

    bound, current, routed = in_thread(bind)
    assert (bound.kind, bound.id) == ("actor", "urn:uuid:bound")
    assert current is bound and routed
