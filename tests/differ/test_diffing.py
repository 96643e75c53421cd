"""Positional list diffs: the hand-written alignment gives what deepdiff (the differ's former engine) gave."""

from __future__ import annotations

import random
from typing import Any

from deepdiff import DeepDiff

from kelemetry_py.sources.diffing import list_changes

_OPS = {
    "values_changed": "change",
    "type_changes": "change",
    "dictionary_item_added": "add",
    "iterable_item_added": "add",
    "dictionary_item_removed": "remove",
    "iterable_item_removed": "remove",
}
# No leaf equals another of a different type (no True beside 1, no 1.0), where == and deepdiff part ways.
LEAVES: list[Any] = ["a", "b", "c", "d", 1, 2, False, None]


def deepdiff_changes(old: list[Any], new: list[Any]) -> list[tuple[Any, ...]]:
    tree = DeepDiff(old, new, view="tree", threshold_to_diff_deeper=0, verbose_level=2)
    found = []
    for report, levels in tree.items():
        op = _OPS.get(report)
        for level in levels if op else ():
            old_value = None if op == "add" else level.t1
            new_value = None if op == "remove" else level.t2
            found.append((level.path(output_format="list"), op, old_value, new_value))
    return sorted(found, key=repr)


def _value(rng: random.Random, depth: int) -> Any:
    draw = rng.random()
    if depth > 2 or draw < 0.5:
        return rng.choice(LEAVES)
    if draw < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice("xyz"): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    if isinstance(value, list):
        items = [_mutate(rng, item, depth + 1) if rng.random() < 0.3 else item for item in value]
        if items and rng.random() < 0.3:
            del items[rng.randrange(len(items))]
        if rng.random() < 0.3:
            items.insert(rng.randint(0, len(items)), _value(rng, depth + 1))
        if rng.random() < 0.1:
            rng.shuffle(items)
        return items
    if isinstance(value, dict):
        mapping = {k: _mutate(rng, v, depth + 1) if rng.random() < 0.4 else v for k, v in value.items()}
        if rng.random() < 0.2:
            mapping[rng.choice("xyzw")] = _value(rng, depth + 1)
        if mapping and rng.random() < 0.2:
            del mapping[rng.choice(list(mapping))]
        return mapping
    return rng.choice(LEAVES) if rng.random() < 0.5 else value


def test_random_lists_diff_as_deepdiff_did() -> None:
    for seed in range(3000):
        rng = random.Random(seed)
        if rng.random() < 0.5:
            old = [rng.choice(LEAVES) for _ in range(rng.randint(0, 8))]  # plain values: the difflib alignment
        else:
            old = [_value(rng, 0) for _ in range(rng.randint(0, 6))]
        new = _mutate(rng, old)
        assert sorted(list_changes(old, new, []), key=repr) == deepdiff_changes(old, new), (seed, old, new)


def test_paths_start_at_the_prefix_and_name_added_items_by_their_new_index() -> None:
    changes = list_changes(["a", "b"], ["x", "a", "b", "c"], ["spec", "args"])
    assert changes == [(["spec", "args", 0], "add", None, "x"), (["spec", "args", 3], "add", None, "c")]
