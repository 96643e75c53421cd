"""The differ's hot states: recently changed objects kept as JSON per top-level field, bounded by bytes, compressed
on eviction; the diff output must not depend on which states are hot."""

from __future__ import annotations

import sys
import tracemalloc
import zlib
from typing import Any

import orjson
import pytest

from kelemetry_py.config import Config, ConfigError, validate
from kelemetry_py.sources.differ import (
    HotStates,
    _ownership,
    _OwnershipMemo,
    _path_tree,
    _State,
    encode_sections,
    join_sections,
)
from kelemetry_py.sources.diffing import strip_bookkeeping
from tests.differ import test_diff_golden as golden


def _objects() -> list[dict[str, Any]]:
    """Every distinct object version of the recorded streams, without bookkeeping (as the differ keeps them)."""
    return [strip_bookkeeping(obj) for _, _, lines in golden._streams() for _, obj in lines]


def _hot(obj: dict[str, Any]) -> _State:
    return _State("uid", "1", b"", (), encode_sections(obj))


def test_sections_join_into_the_objects_own_json() -> None:
    for obj in _objects():
        assert join_sections(encode_sections(obj)) == orjson.dumps(obj)


def test_the_least_recently_changed_are_compressed_past_the_byte_bound() -> None:
    objects = _objects()[:40]
    costs = [HotStates.cost(encode_sections(obj)) for obj in objects]
    bound = sum(costs[-10:])  # room for the last ten, not for more
    hot = HotStates(bound)
    states = [_hot(obj) for obj in objects]
    for index, state in enumerate(states):
        hot.admit(f"key-{index}", state)
        assert hot.bytes <= bound
    kept = [state.sections is not None for state in states]
    assert kept == [False] * 30 + [True] * 10
    assert hot.bytes == bound and len(hot) == 10
    for obj, state in zip(objects[:30], states[:30], strict=True):
        assert zlib.decompress(state.blob) == orjson.dumps(obj), "an evicted state is the same object, compressed"
        assert state.load() == obj


def test_a_new_change_makes_an_object_the_most_recent() -> None:
    first, second, third = _objects()[:3]
    bound = HotStates.cost(encode_sections(first)) + max(
        HotStates.cost(encode_sections(second)), HotStates.cost(encode_sections(third))
    )
    hot = HotStates(bound)
    a, b = _hot(first), _hot(second)
    hot.admit("a", a)
    hot.admit("b", b)
    a_again = _hot(first)
    hot.admit("a", a_again)  # "a" changed again: "b" is now the least recent
    hot.admit("c", _hot(third))
    assert b.sections is None and a_again.sections is not None
    assert hot.bytes <= bound


def test_a_state_bigger_than_the_bound_is_compressed_at_once_and_a_gone_one_uncounted() -> None:
    obj = _objects()[0]
    hot = HotStates(HotStates.cost(encode_sections(obj)) - 1)
    state = _hot(obj)
    hot.admit("big", state)
    assert state.sections is None and hot.bytes == 0 and state.load() == obj
    roomy = HotStates(10 * HotStates.cost(encode_sections(obj)))
    roomy.admit("gone", _hot(obj))
    roomy.discard("gone")
    assert roomy.bytes == 0 and len(roomy) == 0


def test_the_estimated_cost_covers_what_hot_states_really_hold() -> None:
    """The byte bound is only as honest as the estimate: measure the sections (dicts and bytes objects) and this
    tier's entries for every recorded object version."""
    objects = _objects()
    hot = HotStates(1 << 40)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    states = [_State("uid", "1", b"", (), encode_sections(obj)) for obj in objects]
    for index, state in enumerate(states):
        hot.admit(f"key-{index}", state)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # What is not the hot tier's: the _State objects (cold states have them too), the list and the keys.
    others = sum(sys.getsizeof(state) for state in states) + sys.getsizeof(states)
    others += sum(sys.getsizeof(f"key-{index}") for index in range(len(states)))
    assert 0 < held - others <= hot.bytes


@pytest.mark.parametrize("hot_bytes", [0, 4096, 64 * 1024])
async def test_the_diffs_are_the_same_whichever_states_are_hot(hot_bytes: int) -> None:
    """The goldens (recorded streams and the status churn) with no hot states, with a few (constant eviction)
    and with some, against the default bound the goldens were recorded with."""
    recorded = golden._load("differ_records.json")
    for name, rtype, lines in golden._streams():
        assert await golden._records(rtype, lines, hot_state_bytes=hot_bytes) == recorded[name], name
    churn = golden._load("churn_records.json")
    for rtype, events in golden.churn_events():
        records = await golden._records(rtype, events, hot_state_bytes=hot_bytes)
        assert records == churn[rtype.resource], rtype.resource


async def test_a_small_bound_keeps_some_states_hot_and_compresses_the_rest() -> None:
    [(rtype, events)] = [stream for stream in golden.churn_events() if stream[0].resource == "pods"]
    differ = golden.recording_differ(hot_state_bytes=64 * 1024)
    for event_type, obj in events:
        await differ.on_event("fixture", rtype, event_type, obj, relisted=False)
    states = list(differ._states.values())
    hot = [state for state in states if state.sections is not None]
    assert 0 < len(hot) < len(states)
    assert 0 < differ.hot_state_bytes <= 64 * 1024


def test_a_negative_hot_state_bound_is_refused() -> None:
    config = Config()
    config.kube.diff_hot_state_max_bytes = -1
    with pytest.raises(ConfigError, match="diff_hot_state_max_bytes"):
        validate(config)


def test_the_attribution_memo_stays_within_its_bytes_and_answers_as_computing_afresh() -> None:
    memo = _OwnershipMemo(4096)
    entries = [
        entry["fieldsV1"]
        for _, _, lines in golden._streams()
        for _, obj in lines
        for entry in obj["metadata"].get("managedFields", [])
    ]
    changed = (("status", "replicas"), ("spec", "replicas"), ("metadata", "labels", "app"))
    tree = _path_tree(changed)
    for fields in entries:
        known = memo.for_paths(changed)
        key = orjson.dumps(fields)
        owned = known.get(key)
        if owned is None:
            memo.put(known, key, _ownership(fields, tree))
        else:
            assert owned == _ownership(fields, tree)
        # Over by at most what was added since the last check: the paths' entry and one field set.
        assert memo.bytes <= 4096 + 100 * (1 + sum(map(len, changed))) + len(key) + 100
    assert len(entries) > 100


async def test_what_the_watch_shows_is_kept_hot_and_what_a_list_shows_compressed() -> None:
    [(rtype, events)] = [stream for stream in golden.churn_events() if stream[0].resource == "pods"]
    modified = [(event_type, obj) for event_type, obj in events if event_type == "MODIFIED"]
    watched, listed = golden.recording_differ(), golden.recording_differ()
    first_type, first = modified[0]
    await watched.on_event("fixture", rtype, first_type, first, relisted=False)  # a change of an object never listed
    await listed.on_event("fixture", rtype, "ADDED", first, relisted=True)
    [watched_state] = watched._states.values()
    [listed_state] = listed._states.values()
    assert watched_state.sections is not None and watched.hot_state_bytes > 0
    assert listed_state.sections is None and listed_state.blob and listed.hot_state_bytes == 0
