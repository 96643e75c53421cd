"""Times and durations as people and Kubernetes write them: the one parser of the project.

Errors are :class:`InvalidInput` (a ``ValueError`` whose message is safe to show, naming the parameter); the
frontend answers them with a 400.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# How far back a search reaches when it names no start: the Jaeger UI's, the built-in UI's, the analysis API's.
DEFAULT_LOOKBACK_NS = 3600 * 10**9
MAX_TIME_NS = 2**62  # about the year 2116; anything later is a typo or an attack on int64 arithmetic

# Go's units, plus the days and weeks of Jaeger UI's lookback choices ("2d", "7d").
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w)")
_UNIT_NS = {
    "w": 7 * 86_400 * 10**9,
    "d": 86_400 * 10**9,
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,12}))?(Z|z|[+-]\d{2}:\d{2})")
_UNIX = re.compile(r"\d+(\.\d+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidInput(ValueError):
    """A caller's input that cannot be used; the message names the parameter and is safe to show."""


def parse_go_duration(text: str, name: str) -> int:
    """Nanoseconds of a Go duration string such as ``10ms``, ``1h30m`` or ``0.010s``."""
    text = text.strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body == "0":
        return 0
    total = 0.0
    position = 0
    for match in _GO_DURATION.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        position = match.end()
    if not body or position != len(body) or len(body) > 64:
        raise InvalidInput(f"{name}: {text[:64]!r} is not a duration such as 10ms, 2s or 1h30m")
    if total > MAX_TIME_NS:
        raise InvalidInput(f"{name}: {text[:64]!r} is longer than any stored history")
    return sign * int(total)


def parse_rfc3339(text: str, name: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (any fraction precision, ``Z`` or an offset)."""
    match = _RFC3339.fullmatch(text.strip()) if len(text) <= 64 else None
    if not match:
        raise InvalidInput(f"{name}: {text[:64]!r} is not an RFC 3339 time")
    base, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(base + ("+00:00" if zone in ("Z", "z") else zone))
    except ValueError:
        raise InvalidInput(f"{name}: {text!r} is not an RFC 3339 time") from None
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return checked_time(int(moment.timestamp()) * 10**9 + nanos, name)


def parse_time(text: str, name: str, *, now_ns: int | None = None, unix_unit_ns: int = 10**9) -> int:
    """Nanoseconds of an RFC 3339 time, of a unix time in ``unix_unit_ns`` units (a fraction allowed; the
    built-in UI sends milliseconds, the analysis API seconds), or, given ``now_ns``, of ``now`` and ``now-1h``."""
    text = text.strip()
    if now_ns is not None:
        if text == "now":
            return now_ns
        if text.startswith("now-"):
            return now_ns - parse_go_duration(text[4:], name)
    if _UNIX.fullmatch(text):
        whole, _, fraction = text.partition(".")
        if len(whole) > 19:
            raise InvalidInput(f"{name}: out of range (the epoch to the year 2116)")
        nanos = int(whole) * unix_unit_ns + int(fraction[:18].ljust(18, "0")) * unix_unit_ns // 10**18
        return checked_time(nanos, name)
    return parse_rfc3339(text, name)


def checked_time(time_ns: int, name: str) -> int:
    """``time_ns`` if it is between the epoch and :data:`MAX_TIME_NS`, else :class:`InvalidInput` naming ``name``."""
    if not 0 <= time_ns <= MAX_TIME_NS:
        raise InvalidInput(f"{name}: out of range (the epoch to the year 2116)")
    return time_ns


def kube_time_ns(text: str) -> int:
    """Unix nanoseconds of a Kubernetes timestamp (RFC 3339, microseconds at most); ``ValueError`` if it is not one.
    The audit hot path: no regular expression."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
