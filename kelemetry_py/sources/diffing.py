"""The differ's diff: two versions of an object walked together, changes as paths with old and new values.

Dicts are compared key by key, skipping subtrees equal by ``==`` at C speed. Lists of dicts that all carry a
distinct ``name`` (containers, env, ports, volumes...) or ``type`` (conditions) are matched by that key, so
paths read ``spec.template.spec.containers[nginx].image``. Other lists (addresses, endpoints, image names, args) are
compared by position here, with the rules the diff output was defined by: a list of plain values (strings,
numbers, booleans, null) is aligned with :mod:`difflib` when that reports fewer changes than comparing item by
item; items present on one side only are additions or removals; an addition and a removal at the same path are
one change; inside an item, dicts are compared key by key and nested lists by the same rules. A leaf whose type
changes is a change even if ``==`` holds (``1`` -> ``true``); whole subtrees equal by ``==`` are skipped, as the
differ does everywhere, so such a flip nested inside an otherwise equal item is not reported.

Entries are ``(segments, op, old, new)``, ``op`` being ``add``, ``remove`` or ``change``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from typing import Any

import orjson

from kelemetry_py.sources.diffcache import Change, ChangeOp

Entry = tuple[list[Any], ChangeOp, Any, Any]
Found = list[tuple[list[Any], Change]]

# Never shown as changes: bookkeeping that changes on every write.
IGNORED_METADATA = ("managedFields", "resourceVersion")
# A list item matched by its name/type rather than its position is keyed by this marker + the name.
ITEM_MARKER = "\x00"
_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")
_MATCH_KEYS = ("name", "type")
_PIECES: dict[str, str] = {}  # a key's rendering after a parent; field names repeat across every object
_MAX_PIECES = 50_000

_PLAIN = (str, int, float, bool, type(None))
_MISSING: Any = object()

# Report order, which decides the order of entries sharing a path (they are sorted by path afterwards).
_CHANGED, _TYPE_CHANGED, _DICT_ADDED, _DICT_REMOVED, _ITEM_ADDED, _ITEM_REMOVED = range(6)


class _Found:
    """What one list comparison found, per report kind; ``moved`` only counts towards choosing an alignment."""

    __slots__ = ("moved", "reports")

    def __init__(self) -> None:
        self.reports: list[list[Entry]] = [[], [], [], [], [], []]
        self.moved = 0

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.reports) + self.moved

    def extend(self, other: _Found) -> None:
        for mine, theirs in zip(self.reports, other.reports, strict=True):
            mine.extend(theirs)
        self.moved += other.moved


def list_changes(old: list[Any], new: list[Any], prefix: list[Any]) -> list[Entry]:
    """The changes between two lists compared by position, under ``prefix``."""
    found = _Found()
    _list(old, new, prefix, found)
    _pair_up_adds_and_removes(found)
    return [entry for entries in found.reports for entry in entries]


def _pair_up_adds_and_removes(found: _Found) -> None:
    """An item added and an item removed at the same path are one change of that item."""
    added, removed = found.reports[_ITEM_ADDED], found.reports[_ITEM_REMOVED]
    if not added or not removed:
        return
    added_at = {tuple(entry[0]): entry for entry in added}
    removed_at = {tuple(entry[0]): entry for entry in removed}
    for path in added_at.keys() & removed_at.keys():
        gone, came = removed_at[path], added_at[path]
        removed.remove(gone)
        added.remove(came)
        found.reports[_CHANGED].append((gone[0], "change", gone[2], came[3]))


def _value(old: Any, new: Any, path: list[Any], found: _Found) -> None:
    if type(old) is not type(new):
        found.reports[_TYPE_CHANGED].append((path, "change", old, new))
    elif isinstance(old, dict):
        for key, old_value in old.items():
            if key not in new:
                found.reports[_DICT_REMOVED].append(([*path, key], "remove", old_value, None))
            else:
                new_value = new[key]
                if old_value is not new_value and (type(old_value) is not type(new_value) or old_value != new_value):
                    _value(old_value, new_value, [*path, key], found)
        for key, new_value in new.items():
            if key not in old:
                found.reports[_DICT_ADDED].append(([*path, key], "add", None, new_value))
    elif isinstance(old, list):
        _list(old, new, path, found)
    elif old != new:
        found.reports[_CHANGED].append((path, "change", old, new))


def _list(old: list[Any], new: list[Any], path: list[Any], found: _Found) -> None:
    if not all(isinstance(item, _PLAIN) for item in old) or not all(isinstance(item, _PLAIN) for item in new):
        _pairs(old, new, path, found, 0, 0)
        return
    aligned = _Found()
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, old_from, old_to, new_from, new_to in matcher.get_opcodes():
        if tag == "replace":
            _pairs(old[old_from:old_to], new[new_from:new_to], path, aligned, old_from, new_from)
        elif tag == "delete":
            for index in range(old_from, old_to):
                aligned.reports[_ITEM_REMOVED].append(([*path, index], "remove", old[index], None))
        elif tag == "insert":
            for index in range(new_from, new_to):
                aligned.reports[_ITEM_ADDED].append(([*path, index], "add", None, new[index]))
    if len(aligned) > 1:
        by_position = _Found()
        _pairs(old, new, path, by_position, 0, 0)
        if len(aligned) >= len(by_position):
            aligned = by_position
    found.extend(aligned)


def _pairs(old: list[Any], new: list[Any], path: list[Any], found: _Found, old_from: int, new_from: int) -> None:
    """Item by item; an item is named by its old index, or by its new one when only the new side has it."""
    for offset, (old_item, new_item) in enumerate(zip_longest(old, new, fillvalue=_MISSING)):
        index = old_from + offset
        if new_item is _MISSING:
            found.reports[_ITEM_REMOVED].append(([*path, index], "remove", old_item, None))
        elif old_item is _MISSING:
            found.reports[_ITEM_ADDED].append(([*path, new_from + offset], "add", None, new_item))
        elif old_from != new_from and old_item == new_item:
            found.moved += 1
        elif type(old_item) is not type(new_item) or old_item != new_item:
            _value(old_item, new_item, [*path, index], found)


# --------------------------------------------------------------------------------------------- whole objects


def strip_bookkeeping(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow-copied object without the metadata fields that are never shown as changes."""
    result = dict(obj)
    metadata = result.get("metadata")
    if isinstance(metadata, dict):
        # A copy and two pops: at C speed, where a comprehension paid for every key it kept.
        metadata = result["metadata"] = dict(metadata)
        for key in IGNORED_METADATA:
            metadata.pop(key, None)
    return result


def _piece(segment: Any) -> str:
    """How one segment reads after a parent: ``.key``, ``[3]``, ``[nginx]`` or ``["a/b"]``."""
    if type(segment) is str:
        found = _PIECES.get(segment)
        if found is None:
            if segment.startswith(ITEM_MARKER):
                found = f"[{segment[1:]}]"
            elif _PLAIN_KEY.match(segment):
                found = f".{segment}"
            else:
                found = f"[{orjson.dumps(segment).decode()}]"
            if len(_PIECES) >= _MAX_PIECES:
                _PIECES.clear()
            _PIECES[segment] = found
        return found
    if isinstance(segment, int):
        return f"[{segment}]"
    return f"[{orjson.dumps(str(segment)).decode()}]"


def render_path(segments: Sequence[Any]) -> str:
    """``spec.template.spec.containers[nginx].image``: a leading plain key has no dot."""
    text = "".join(_piece(segment) for segment in segments)
    return text[1:] if text.startswith(".") else text


def _keys_items(items: list[Any], key: str) -> bool:
    """Every item is a dict whose value of ``key`` is a distinct string."""
    seen: set[str] = set()
    for item in items:
        if type(item) is not dict:
            return False
        value = item.get(key)
        if type(value) is not str or value in seen:
            return False
        seen.add(value)
    return True


def _match_key(items: list[Any]) -> str | None:
    """``name`` or ``type`` if every item is a dict whose value of it is a distinct string, else None."""
    if items:
        for key in _MATCH_KEYS:
            if _keys_items(items, key):
                return key
    return None


def _same_items(old: list[Any], new: list[Any], key: str) -> bool:
    """Whether ``new`` holds the items of ``old`` (matched by ``key``) in the same order, and is matched by ``key``
    too: then ``new``'s values of it are ``old``'s, distinct strings, and it is left to show that no key preferred
    to ``key`` matches ``new``."""
    if len(old) != len(new):
        return False
    for old_item, new_item in zip(old, new, strict=False):  # of one length
        if type(new_item) is not dict or new_item.get(key) != old_item[key]:
            return False
    for preferred in _MATCH_KEYS[: _MATCH_KEYS.index(key)]:  # noqa: SIM110 (any() of a generator costs more here)
        if _keys_items(new, preferred):
            return False
    return True


def _walk(old: Any, new: Any, segments: list[Any], path: str, found: Found) -> None:
    """Walk both trees together; ``path`` is ``segments`` rendered, grown a piece per level."""
    if type(old) is list and type(new) is list:
        old_key = _match_key(old)
        if old_key is not None and _same_items(old, new, old_key):
            # The same items in the same order (a status update): pair them as they stand. (Checked against the
            # old items' keys rather than by matching the new list afresh: most changes are of this kind.)
            for old_item, new_item in zip(old, new, strict=True):
                if old_item is not new_item and old_item != new_item:
                    segment = ITEM_MARKER + old_item[old_key]
                    _walk(old_item, new_item, [*segments, segment], _child(path, segment), found)
            return
        new_key = _match_key(new)
        key = old_key or new_key if not (old and new) else (old_key if old_key == new_key else None)
        if key is None:
            for entry_segments, op, old_value, new_value in list_changes(old, new, segments):
                found.append((entry_segments, Change(render_path(entry_segments), op, old_value, new_value)))
            return
        old = {ITEM_MARKER + item[key]: item for item in old}
        new = {ITEM_MARKER + item[key]: item for item in new}
    if type(old) is dict and type(new) is dict:
        new_get = new.get
        removed = False
        for key, old_value in old.items():
            new_value = new_get(key, _MISSING)
            if new_value is _MISSING:
                removed = True
                found.append(([*segments, key], Change(_child(path, key), "remove", old_value, None)))
            elif old_value is not new_value and old_value != new_value:
                kind = type(old_value)
                child = path + piece if path and (piece := _PIECES.get(key)) else _child(path, key)
                if kind is type(new_value) and (kind is dict or kind is list):
                    _walk(old_value, new_value, [*segments, key], child, found)
                else:  # a leaf: what _walk would find for it
                    found.append(([*segments, key], Change(child, "change", old_value, new_value)))
        if removed or len(new) != len(old):
            for key, new_value in new.items():
                if key not in old:
                    found.append(([*segments, key], Change(_child(path, key), "add", None, new_value)))
        return
    found.append((segments, Change(path, "change", old, new)))


def _child(path: str, key: Any) -> str:
    piece = _piece(key)
    if path:
        return path + piece
    return piece[1:] if piece.startswith(".") else piece


def diff_segments(old: Mapping[str, Any], new: Mapping[str, Any], *, stripped: bool = False) -> Found:
    """Every change from ``old`` to ``new`` with its path segments, sorted by rendered path. ``stripped``: both
    are already without bookkeeping (:func:`strip_bookkeeping`)."""
    found: Found = []
    if not stripped:
        old, new = strip_bookkeeping(old), strip_bookkeeping(new)
    _walk(old, new, [], "", found)
    found.sort(key=_by_path)
    return found


def _by_path(item: tuple[list[Any], Change]) -> str:
    return item[1].path
