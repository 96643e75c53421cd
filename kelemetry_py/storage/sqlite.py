"""The embedded trace store: one SQLite file in WAL mode, written on one thread and read on others.

Tables: ``traces`` (one row per raw trace: a small integer id, its time range and the object it belongs to),
``spans`` (one row per span, keyed by its document id: the trace's id shifted left by ``SEQ_BITS`` plus the
span's number within its trace, so a trace's spans are one range and a match in the index names its trace
without reading the span; the span id, the service, and the number of the rest's MessagePack body in ``bodies``,
appended as spans come; the writer remembers
which span ids a trace has, so a re-delivered span replaces itself) and ``span_terms``, an FTS5 inverted
index with one document per span. A trace's object tags (cluster to uid, the same on each of its spans) are its
row's columns: the object span's, or until it comes the first span's, with empty ones filled in by later spans;
an object is found through the indexes on its uid, its name or its resource. The document of a span holds each of
its other attributes as one term (its service and key's number
from ``term_keys``, then the value in hex, so that any text is one exact token). FTS5 collects a transaction's
terms in memory and writes them as one compressed segment at commit, so indexing a span costs a fraction of
what one B-tree row per attribute did, in a tenth of the space; a search intersects posting lists, which is
Jaeger's rule (every tag on one span) for free.

Concurrent ``write`` calls are coalesced: spans that arrive while a transaction is committing go together into
the next one, and each ``write`` returns once its spans are committed, or raises if they were not. A span that
cannot be represented (a time or id beyond 64 bits) is dropped and counted, never failing the spans beside it.
Reads run on their own connections and threads, so a query never waits for a commit.

The file is opened through apsw: its own current SQLite build, with less overhead per statement and row than the
stdlib module (the writer does a sixth fewer instructions per span). Every connection to the file in one process
must come from that one library: SQLite's file locks are per process, and a connection from a second library
would neither see nor respect them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import apsw
import msgspec

from kelemetry_py.metrics import Metrics
from kelemetry_py.model import OBJECT_TAGS, SERVICE_OBJECT, Attributes, AttrValue, LogEntry, ObjectRef, Span
from kelemetry_py.storage import TraceHit, TraceQuery

log = logging.getLogger(__name__)

WRITER_LABEL = "sqlite"
SCHEMA_VERSION = 5
READ_THREADS = 2
_T = TypeVar("_T")
_U64 = 1 << 64
_U128 = 1 << 128
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
# Tags every span of one object carries: its trace's columns (traces), not terms of each span.
OBJECT_KEYS = (*OBJECT_TAGS, "uid")
_OBJECT_KEY_SET = frozenset(OBJECT_KEYS)
_COLUMN_OF = {key: "grp" if key == "group" else key for key in OBJECT_KEYS}
# The index that finds traces by their object tags, by the first of these keys a search has; by time without one.
_OBJECT_INDEXES = (("uid", "traces_by_uid"), ("name", "traces_by_name"), ("resource", "traces_by_resource"))
# Those that name one object: its few traces are each checked for span tags (see _FEW_TRACES).
_SELECTIVE_KEYS = ("uid", "name")
# Entries the writer remembers of traces it wrote (ids, span numbers, time range) before starting afresh.
_TRACE_CACHE = 100_000
# Span ids (with their numbers) the writer remembers of those traces, about 100 bytes each, before starting afresh.
_SPAN_CACHE = 300_000
# An object with fewer traces than this has each checked for its span terms rather than every matching span read.
_FEW_TRACES = 64
# What a span only the database objects to raises (a value of an unbindable type or beyond 64 bits, a constraint).
_NOT_STORABLE = (apsw.ConstraintError, apsw.MismatchError, apsw.TooBigError, TypeError, OverflowError, ValueError)
# How long a statement waits for another connection's lock before failing (what Python's sqlite3 waits by default).
_BUSY_TIMEOUT_MS = 5000
_AUTOMERGE = 8  # FTS5's default is 4
# A span's document id: its trace's id above, its number within the trace below.
SEQ_BITS = 24
_SEQ_LIMIT = 1 << SEQ_BITS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    tid INTEGER PRIMARY KEY,
    trace_id BLOB NOT NULL UNIQUE,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    -- 1 once the object span was seen: its tags name the object, other spans' tags are only a stand-in
    has_root INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    grp TEXT NOT NULL,
    version TEXT NOT NULL,
    resource TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE INDEX IF NOT EXISTS traces_by_end ON traces (end_ns);
-- finding an object: by its uid or its name (the rest checked on the row), or every object of a resource, newest
-- first; a trace's row goes into each once (unlike a row per tag, which cost more than the span's own row)
CREATE INDEX IF NOT EXISTS traces_by_uid ON traces (uid);
CREATE INDEX IF NOT EXISTS traces_by_name ON traces (name);
CREATE INDEX IF NOT EXISTS traces_by_resource ON traces (resource, start_ns);
-- keyed by the span's document: its trace's tid << SEQ_BITS | its number within the trace, so a trace's spans
-- are one range; the writer knows which span ids a trace has (no second index). A busy cluster's batches add
-- spans to thousands of traces at once, all over this table: its rows are small (tens to a page), so a commit
-- rewrites few pages. The rest of the span is one MessagePack body (parent id, name, start, end, error, status
-- message, attributes, logs) in ``bodies``, numbered as they come, so bodies are only ever appended.
CREATE TABLE IF NOT EXISTS spans (
    doc INTEGER PRIMARY KEY,
    span_id INTEGER NOT NULL,
    service TEXT NOT NULL,
    body_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
-- every service and key of a span tag has a number, the start of its terms (see tag_term); a search without a
-- service looks for the tags of each service that has them
CREATE TABLE IF NOT EXISTS term_keys (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    key TEXT NOT NULL,
    UNIQUE (key, service)
);
-- contentless and without document sizes (nothing ranks): the terms are rebuilt from a span's row to delete it
CREATE VIRTUAL TABLE IF NOT EXISTS span_terms USING fts5 (
    terms, content='', detail=none, columnsize=0, tokenize='ascii'
);
CREATE VIRTUAL TABLE IF NOT EXISTS span_term_list USING fts5vocab (span_terms, 'row');
CREATE VIRTUAL TABLE IF NOT EXISTS span_term_docs USING fts5vocab (span_terms, 'instance');
"""

_TRACE_COLUMNS = "tid, trace_id, start_ns, end_ns, has_root, cluster, grp, version, resource, namespace, name, uid"
# The writer's inserts, their rows given to ``_insert_rows``.
_INSERT_TRACES = f"INSERT INTO traces ({_TRACE_COLUMNS})"
_INSERT_SPANS = "INSERT INTO spans (doc, span_id, service, body_id)"
_INSERT_BODIES = "INSERT INTO bodies (id, body)"
_INSERT_TERMS_ROWS = "INSERT INTO span_terms (rowid, terms)"
_UPDATE_TRACE = (
    "UPDATE traces SET start_ns = ?, end_ns = ?, has_root = ?, cluster = ?, grp = ?, version = ?, resource = ?,"
    " namespace = ?, name = ?, uid = ? WHERE tid = ?"
)
_INSERT_TERMS = f"{_INSERT_TERMS_ROWS} VALUES (?, ?)"  # one span's, when a stored span is rewritten
_DELETE_TERMS = "INSERT INTO span_terms (span_terms, rowid, terms) VALUES ('delete', ?, ?)"

_encode = msgspec.msgpack.Encoder().encode
# (parent id, name, start, end, error, status message, attributes, logs)
_Body = tuple[int | None, str, int, int, bool, str, dict[str, Any], list[tuple[int, str, dict[str, Any]]]]
_decode_body = msgspec.msgpack.Decoder(_Body).decode


def _attributes_of(body: bytes) -> dict[str, Any]:
    return _decode_body(body)[6]


class _Unrepresentable(ValueError):
    """A span the store cannot hold as it is (a time or an id outside 64 bits)."""


def _unsigned(signed: int) -> int:
    return signed + _U64 if signed < 0 else signed


def _in_chunks(values: list[bytes], size: int = 500) -> Iterator[tuple[list[bytes], str]]:
    """``values`` in chunks for ``IN (...)``, each with its placeholders (SQLite bounds a statement's parameters)."""
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        yield chunk, ",".join("?" * len(chunk))


def tag_texts(value: AttrValue) -> list[str]:
    """The strings a tag value is searchable by: Jaeger-style text, and each item of a list."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def key_prefix(key_id: int) -> str:
    """The start of every term of one service's key: its number in hex, then ``x`` (not a hex digit)."""
    return f"{key_id:x}x"


def tag_term(prefix: str, text: str) -> str:
    """One attribute of a span as one index term: its service and key's ``key_prefix``, so that a search with a
    service intersects only that service's postings, then the value in hex. Hex keeps any text one token that
    the ``ascii`` tokenizer leaves as it is (no case folding, no splitting). A value longer than ``_LONG_VALUE``
    bytes (a user agent) is named by its 96-bit BLAKE2 digest after ``z`` (not a hex digit either): the index
    holds far fewer bytes per term, and ``tag_values`` reads such a value back from a span that has it. (An
    audit ID, unique to its span, costs less in hex than its digest costs to compute.)"""
    value = text.encode()
    if len(value) > _LONG_VALUE:
        return f"{prefix}z{hashlib.blake2b(value, digest_size=12).hexdigest()}"
    return prefix + value.hex()


_TERM_CACHE = 20_000  # per service and key: the terms of values recent batches had
_LONG_VALUE = 40  # bytes of text beyond which a value's term is its digest (an audit ID, 36, is not)
# The prefix of a service's key (see key_prefix), or None where it has none.
_PrefixOf = Callable[[str, str], "str | None"]
_ABSENT: Any = object()  # not None: a None value, though no AttrValue, is indexed as its text like any other


def value_terms(prefix: str, value: Any) -> list[str]:
    """The terms of one attribute's value (see tag_term)."""
    kind = type(value)
    if kind is str or kind is int:
        return [tag_term(prefix, str(value))]
    return [tag_term(prefix, text) for text in tag_texts(value)]


def index_terms(service: str, attributes: Attributes, prefix_of: _PrefixOf) -> str:
    """The document of one span's tags: each attribute but the object tags (its trace's columns), empty when there
    are none (a query with span tags cannot match the span, one with only a service checks the spans table). A
    key without a prefix has no terms. ``batch_index`` gives the same, for many spans at once."""
    terms: list[str] = []
    for key, value in attributes.items():
        if key in _OBJECT_KEY_SET:
            continue
        prefix = prefix_of(service, key)
        if prefix is not None:
            terms.extend(value_terms(prefix, value))
    return " ".join(terms)


def _terms_by_value(prefix: str, values: Iterable[Any]) -> dict[Any, str]:
    """``tag_term`` of each value (text or int)."""
    return {value: tag_term(prefix, str(value)) for value in values}


def _distinct_values(values: list[Any]) -> set[Any] | None:
    """A column's distinct values (but _ABSENT) where its terms can be made value by value: text, or int alone (in a
    set, True, 1 and 1.0 are one value with three texts); else None."""
    try:
        distinct = set(values)
    except TypeError:  # a list
        return None
    distinct.discard(_ABSENT)
    kinds = set(map(type, distinct))
    if kinds == {str}:  # no value of another type equals a str: none was merged away
        return distinct
    kinds = set(map(type, values))
    kinds.discard(object)
    return distinct if kinds == {int} else None


def batch_index(
    service: str, attributes: Sequence[Attributes], prefix_of: _PrefixOf, caches: dict[str, dict[Any, str]]
) -> list[str]:
    """``index_terms`` of many spans of one service, key by key rather than span by span: each distinct value of a
    key becomes its term once (or is found in ``caches``, by key, when values repeat), and each span's document
    is one join of its terms. The terms are the same as ``index_terms`` gives, in key order."""
    count = len(attributes)
    full_columns: list[list[str]] = []  # terms of keys every span has
    part_columns: list[list[str | None]] = []  # of the others: None where a span has none
    for key in sorted(set().union(*attributes).difference(_OBJECT_KEY_SET)):
        values: list[Any] = list(
            map(dict.get, attributes, itertools.repeat(key, count), itertools.repeat(_ABSENT, count))
        )
        distinct = _distinct_values(values)
        prefix = prefix_of(service, key)
        if prefix is None:
            continue
        terms: list[str | None]
        if distinct is not None:
            if len(distinct) * 2 > count:  # mostly unique (audit IDs): a cache would only churn
                by_value: dict[Any, str | None] = dict(_terms_by_value(prefix, distinct))
            else:
                cache = caches.get(key)
                if cache is None or len(cache) + len(distinct) > _TERM_CACHE:
                    cache = caches[key] = {}
                missing = distinct.difference(cache)
                if missing:
                    cache.update(_terms_by_value(prefix, missing))
                by_value = {value: cache[value] for value in distinct}
            by_value[_ABSENT] = None
            terms = list(map(by_value.__getitem__, values))
        else:
            terms = [None if value is _ABSENT else (" ".join(value_terms(prefix, value)) or None) for value in values]
        if None in terms:
            part_columns.append(terms)
        else:
            full_columns.append(cast(list[str], terms))
    documents = list(map(" ".join, zip(*full_columns, strict=True))) if full_columns else [""] * count
    for terms in part_columns:
        for position in itertools.compress(range(count), terms):  # the spans with terms of this key
            document, term = documents[position], cast(str, terms[position])
            documents[position] = f"{document} {term}" if document else term
    return documents


def match_expression(tags: Sequence[tuple[str, str]], prefixes: Iterable[dict[str, str]]) -> str:
    """An FTS5 query for documents holding every tag, of one of the services whose key prefixes are given (each
    term quoted, so none reads as an operator)."""
    return " OR ".join(
        "(" + " AND ".join(f'"{tag_term(prefix[key], text)}"' for key, text in tags) + ")" for prefix in prefixes
    )


def find_traces_sql(query: TraceQuery, *, expression: str | None = None, limited: bool = True) -> tuple[str, list[Any]]:
    """The statement behind find_traces: tag matches come from the indexes, never a table scan.

    Object tags are the trace's columns: the index of its uid, else its name, else its resource finds the traces
    (newest first for a resource), and the other tags are checked on each row; with none of those, traces are
    walked newest first and checked, which stops after ``limit`` hits. ``expression`` (an FTS5 query of span
    terms, see ``span_terms``) keeps traces with a span holding all of them; the other span tags and the service
    are expected in it. Without an expression, a service is checked on the spans table. Without ``limited``
    every matching trace comes back, newest first, for the caller to walk.
    """
    object_level = {key: str(value) for key, value in query.tags.items() if key in _OBJECT_KEY_SET}
    index = next((index for key, index in _OBJECT_INDEXES if key in object_level), "traces_by_start")
    sql = [
        "SELECT t.trace_id, t.start_ns, t.end_ns, t.cluster, t.grp, t.version, t.resource, t.namespace,",
        f"t.name, t.uid, t.tid FROM traces t INDEXED BY {index} WHERE t.end_ns >= ? AND t.start_ns <= ?",
    ]
    params: list[Any] = [query.start_ns, query.end_ns]
    for key in OBJECT_KEYS:
        if key in object_level:
            sql.append(f"AND t.{_COLUMN_OF[key]} = ?")
            params.append(object_level[key])
    if expression is not None:
        sql.append(f"AND t.tid IN (SELECT rowid >> {SEQ_BITS} FROM span_terms WHERE span_terms MATCH ?)")
        params.append(expression)
    elif query.service:
        sql.append(
            f"AND EXISTS (SELECT 1 FROM spans sp WHERE sp.doc >= t.tid << {SEQ_BITS}"
            f" AND sp.doc < (t.tid + 1) << {SEQ_BITS} AND sp.service = ?)"
        )
        params.append(query.service)
    sql.append("ORDER BY t.start_ns DESC, t.end_ns DESC")
    if limited:
        sql.append("LIMIT ?")
        params.append(query.limit)
    return " ".join(sql), params


# Rows one INSERT statement takes at most: apsw's executemany prepares and steps its statement anew for every
# row, which cost more than many a row's own insert; a statement of many rows pays that once.
_ROWS_PER_INSERT = 64


@functools.cache
def _values_sql(head: str, columns: int, rows: int) -> str:
    row = "(" + ", ".join("?" * columns) + ")"
    return f"{head} VALUES {', '.join([row] * rows)}"


def _insert_rows(conn: apsw.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head`` (``INSERT INTO table (columns)``) with ``rows``, in order, many to a statement: up to
    ``_ROWS_PER_INSERT``, then powers of two, so that a few statements (each prepared once) cover any count."""
    if not rows:
        return
    columns = len(rows[0])
    start, total = 0, len(rows)
    while start < total:
        count = min(_ROWS_PER_INSERT, 1 << ((total - start).bit_length() - 1))
        conn.execute(
            _values_sql(head, columns, count), list(itertools.chain.from_iterable(rows[start : start + count]))
        )
        start += count


def _connect(path: str) -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
    return conn


def _first_two(item: tuple[int, int, Span]) -> tuple[int, int]:
    return item[0], item[1]


def spans_of_traces_sql(marks: str) -> str:
    """The spans of the traces whose ids fill ``marks``. CROSS JOIN fixes the order, each trace found by its id and
    then its spans by their documents' range: left to itself the planner may scan every span instead."""
    return (
        "SELECT t.trace_id, s.span_id, s.service, b.body FROM traces t"
        f" CROSS JOIN spans s ON s.doc >= t.tid << {SEQ_BITS} AND s.doc < (t.tid + 1) << {SEQ_BITS}"
        " CROSS JOIN bodies b ON b.id = s.body_id"
        f" WHERE t.trace_id IN ({marks})"
    )


def _hit(row: Sequence[Any]) -> TraceHit:
    return TraceHit(
        trace_id=int.from_bytes(row[0], "big"),
        ref=ObjectRef(row[3], row[4], row[5], row[6], row[7], row[8], uid=row[9]),
        start_ns=row[1],
        end_ns=row[2],
    )


_TRACE_ID, _SPAN_ID, _PARENT_ID = attrgetter("trace_id"), attrgetter("span_id"), attrgetter("parent_id")
_START, _END = attrgetter("start_ns"), attrgetter("end_ns")


class _Batch:
    """Spans as rows, made on the writer thread: for each span, its body, signed span id and span-term document,
    in lists side by side (a batch costs a few lists, not an object per span)."""

    __slots__ = ("bodies", "documents", "ends", "roots", "span_ids", "spans", "starts", "trace_ids")

    def __init__(self, spans: list[Span], index: Callable[[list[Span]], list[str]]) -> None:
        self.starts: list[int] = list(map(_START, spans))
        self.ends: list[int] = list(map(_END, spans))
        for times in (self.starts, self.ends):
            if min(times) < _I64_MIN or max(times) > _I64_MAX:
                raise _Unrepresentable("a time beyond 64 bits")
        trace_ids = list(map(_TRACE_ID, spans))
        span_ids = list(map(_SPAN_ID, spans))
        parents = list(map(_PARENT_ID, spans))
        parent_ids = [parent_id for parent_id in parents if parent_id is not None]
        if min(trace_ids) < 0 or max(trace_ids) >= _U128 or min(span_ids) < 0 or max(span_ids) >= _U64:
            raise _Unrepresentable("trace or span id out of range")
        if parent_ids and (min(parent_ids) < 0 or max(parent_ids) >= _U64):
            raise _Unrepresentable("parent id out of range")
        try:
            self.documents = index(spans)
            self.bodies = [
                _encode(
                    (
                        span.parent_id,
                        span.name,
                        span.start_ns,
                        span.end_ns,
                        span.error,
                        span.status_message,
                        span.attributes,
                        [(entry.time_ns, entry.name, entry.fields) for entry in span.logs] if span.logs else (),
                    )
                )
                for span in spans
            ]
        except (OverflowError, TypeError, ValueError, msgspec.EncodeError) as exc:  # ValueError: bad UTF-16
            raise _Unrepresentable(f"attributes or logs: {exc}") from exc
        self.spans = spans
        self.trace_ids = trace_ids
        # SQLite integers are signed 64-bit; span ids use all 64 bits.
        self.span_ids = [span_id - _U64 if span_id > _I64_MAX else span_id for span_id in span_ids]
        # Object spans: their tags name their trace's object.
        self.roots = {
            position
            for position, parent_id in enumerate(parents)
            if parent_id is None and spans[position].service == SERVICE_OBJECT
        }

    @classmethod
    def keeping_representable(
        cls, spans: list[Span], index: Callable[[list[Span]], list[str]]
    ) -> tuple[_Batch | None, int]:
        """The batch of ``spans``; where one cannot be represented, of the others, and how many were dropped."""
        try:
            return cls(spans, index), 0
        except _Unrepresentable:
            pass
        kept: list[Span] = []
        for span in spans:
            try:
                cls([span], index)
            except _Unrepresentable as exc:
                log.warning("dropping span %016x of trace %032x: %s", span.span_id, span.trace_id, exc)
            else:
                kept.append(span)
        return (cls(kept, index) if kept else None), len(spans) - len(kept)


class _Trace:
    """What the writer remembers of a stored trace, so that most batches need no read of the traces table."""

    __slots__ = ("end_ns", "next_seq", "ref", "seqs", "start_ns", "tid")

    def __init__(
        self, tid: int, seqs: dict[int, int], start_ns: int, end_ns: int, ref: tuple[str, ...] | None
    ) -> None:
        self.tid, self.start_ns, self.end_ns = tid, start_ns, end_ns
        self.ref = ref  # the object columns while no object span has named the object; None once one has
        self.seqs = seqs  # each stored span's number by its (signed) span id: a span written again keeps its row
        self.next_seq = max(seqs.values(), default=-1) + 1


def _object_columns(attributes: Attributes) -> tuple[str, ...]:
    """The traces table's object columns (cluster to uid) from the attributes of the span that names the object."""
    return (*(str(attributes.get(key, "")) for key in OBJECT_TAGS), str(attributes.get("uid", "")))


class SqliteStore:
    """SpanWriter and TraceReader on one SQLite file; ``await store.open()`` (or ``async with``) first."""

    def __init__(
        self,
        path: str,
        *,
        retention_hours: float = 0,
        metrics: Metrics | None = None,
        retention_check_seconds: float = 300.0,
        durable_commits: bool = True,
        active_trace_seconds: float = 0,
    ) -> None:
        self.path = path
        self.durable_commits = durable_commits
        self.retention_ns = int(retention_hours * 3600 * 1_000_000_000)
        self._metrics = metrics
        self._retention_check_seconds = retention_check_seconds
        self._executor: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._conn: apsw.Connection | None = None  # touched only on the writer's thread
        self._local = threading.local()  # each read thread's own connection
        self._read_conns: list[apsw.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._traces: dict[int, _Trace] = {}  # by trace id; writer thread only
        self._remembered_spans = 0  # span ids in self._traces, about
        # A trace is remembered while it ended less than this before the newest span (0: up to the bounds alone).
        self._active_ns = int(active_trace_seconds * 1_000_000_000)
        self._swept_at_ns = 0  # the newest span end at the last sweep of traces no longer active
        # Writer thread only: each service and key's term prefix (None: to be read), new ones not stored yet, and
        # each service's terms of recent values.
        self._prefixes: dict[tuple[str, str], str] | None = None
        self._new_keys: list[tuple[int, str, str]] = []
        self._term_caches: dict[str, dict[str, dict[Any, str]]] = {}  # by service, then key: value → term
        self._next_tid = 1  # writer thread only; set at open
        self._next_body = 1  # likewise
        self._pending: list[Span] = []
        self._pending_done: asyncio.Future[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def open(self) -> SqliteStore:
        if self._executor is not None:
            return self
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        if self.path != ":memory:":  # a memory database is private to its connection: reads use the writer's
            self._readers = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="sqlite-read")
        if self.retention_ns > 0:
            self._retention_task = asyncio.get_running_loop().create_task(
                self._retention_loop(), name="sqlite-retention"
            )
        return self

    async def close(self) -> None:
        if self._closed or self._executor is None:
            self._closed = True
            return
        self._closed = True
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        await self.flush()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        with self._read_conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def __aenter__(self) -> SqliteStore:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        try:
            version = next(conn.execute("PRAGMA user_version"))[0]
            tables = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'traces'").fetchone()
            if version != SCHEMA_VERSION and (version or tables):
                # Converting would rebuild every index of a file that may hold days of traces; the span log has
                # only what the store has not acknowledged, so nothing can be replayed into a fresh file either.
                raise RuntimeError(
                    f"{self.path} holds traces in store format {version}, this version reads format"
                    f" {SCHEMA_VERSION}; move the file aside to start afresh"
                )
            # Before the first table exists: 16 KiB pages hold whole spans with little slack at the end of a page.
            conn.execute("PRAGMA page_size=16384")
            conn.execute("PRAGMA journal_mode=WAL")
            # The span log moves this writer's cursor past spans once ``write`` returns, and later deletes them:
            # with durable commits (spool.fsync "always") each commit reaches the disk first (FULL fsyncs the
            # WAL), so a power loss cannot take spans the log no longer has. NORMAL, for the policies that accept
            # losing the last moments on power loss, never fsyncs a commit and loses at most those, never
            # consistency.
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable_commits else 'NORMAL'}")
            conn.execute("PRAGMA cache_size=-16384")  # 16 MiB: tag rows go in sorted, so few index pages are hot
            # Checkpoint every 64 MiB of WAL rather than 4: hot index pages are copied back once, not sixteen times.
            conn.execute("PRAGMA wal_autocheckpoint=4096")
            conn.execute("PRAGMA journal_size_limit=67108864")
            created = tables is None
            conn.execute(_SCHEMA)
            if created:
                # Merge the span index's segments eight at a time rather than four: each posting is rewritten about
                # half as often as the index grows, for a few more segments to look a term up in.
                conn.execute(f"INSERT INTO span_terms (span_terms, rank) VALUES ('automerge', {_AUTOMERGE})")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._next_tid = next(conn.execute("SELECT coalesce(max(tid), 0) + 1 FROM traces"))[0]
            self._next_body = next(conn.execute("SELECT coalesce(max(id), 0) + 1 FROM bodies"))[0]
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run on the writer's thread (writes, retention, and reads of a memory database)."""
        if self._executor is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _read(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a read on a read thread with its own connection, beside whatever the writer is doing."""
        if self._readers is None:
            return await self._run(lambda: func(self._connection(), *args))
        return await asyncio.get_running_loop().run_in_executor(
            self._readers, lambda: func(self._read_connection(), *args)
        )

    def _read_connection(self) -> apsw.Connection:
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA cache_size=-8192")  # 8 MiB each
            self._local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

    # -- writing ---------------------------------------------------------------------------------------------

    async def write(self, spans: Sequence[Span]) -> None:
        if self._closed:
            raise RuntimeError("SqliteStore is closed")
        if self._executor is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        if not spans:
            return
        if self._pending_done is None:
            self._pending_done = asyncio.get_running_loop().create_future()
        done = self._pending_done
        self._pending.extend(spans)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_pending())
        await asyncio.shield(done)

    async def flush(self) -> None:
        """Writes are committed before ``write`` returns; this waits for ones still in flight."""
        while self._committer is not None and not self._committer.done():
            await asyncio.shield(self._committer)

    async def _commit_pending(self) -> None:
        while self._pending:
            spans, self._pending = self._pending, []
            done, self._pending_done = self._pending_done, None
            assert done is not None
            try:
                dropped = await self._run(self._write_sync, spans)
            except Exception as exc:
                log.exception("writing %d spans to %s failed", len(spans), self.path)
                if self._metrics is not None:
                    self._metrics.export_errors.labels(WRITER_LABEL).inc()
                done.set_exception(exc)
                done.exception()  # retrieved here, so no "never retrieved" warning when no writer awaits
            else:
                if self._metrics is not None:
                    self._metrics.spans_exported.labels(WRITER_LABEL).inc(len(spans) - dropped)
                    if dropped:
                        self._metrics.spans_dropped.labels(WRITER_LABEL).inc(dropped)
                done.set_result(None)

    def _write_sync(self, spans: list[Span]) -> int:
        """Commit ``spans`` in one transaction; returns how many were dropped as unrepresentable."""
        batch, dropped = _Batch.keeping_representable(spans, self._index_batch)
        conn = self._connection()
        if self._new_keys:
            self._store_new_keys(conn)
        if batch is None:
            return dropped
        if self._active_ns:
            self._forget_inactive_traces(max(batch.ends))
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                self._insert(conn, batch, range(len(batch.spans)))
            except _NOT_STORABLE:
                # Something in one span only the database objects to: find it span by span, keep the rest.
                conn.execute("ROLLBACK")
                self._forget_uncommitted()  # ids handed out by the rolled-back transaction are void
                conn.execute("BEGIN IMMEDIATE")
                dropped += self._insert_one_by_one(conn, batch)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._forget_uncommitted()
            raise
        return dropped

    def _insert_one_by_one(self, conn: apsw.Connection, batch: _Batch) -> int:
        dropped = 0
        for position, span in enumerate(batch.spans):
            conn.execute("SAVEPOINT one_span")
            try:
                self._insert(conn, batch, [position])
            except _NOT_STORABLE:
                conn.execute("ROLLBACK TO one_span")
                self._forget_uncommitted()
                dropped += 1
                log.warning("dropping span %016x of trace %032x: not storable", span.span_id, span.trace_id)
            conn.execute("RELEASE one_span")
        return dropped

    def _forget_inactive_traces(self, newest_end_ns: int) -> None:
        """Forget the traces that ended ``active_trace_seconds`` before the newest span (their windows are over; a
        late span reads its trace back), each time that newest end has moved on by a quarter of it: memory then
        follows the traces being written, not every trace up to the bounds (100,000 of them, 300,000 spans)."""
        if newest_end_ns - self._swept_at_ns < self._active_ns // 4:
            return
        self._swept_at_ns = newest_end_ns
        cutoff = newest_end_ns - self._active_ns
        active = {trace_id: trace for trace_id, trace in self._traces.items() if trace.end_ns >= cutoff}
        if len(active) < len(self._traces):
            self._traces = active
            self._remembered_spans = sum(len(trace.seqs) for trace in active.values())

    def _forget_uncommitted(self) -> None:
        """Ids and index rows a rolled-back transaction made do not exist: forget what was remembered of them."""
        self._traces.clear()  # trace ids handed out stay unused: the next one is still higher than any stored
        self._remembered_spans = 0

    def _known_traces(self, conn: apsw.Connection, trace_ids: list[int]) -> None:
        """Read the stored state of traces the writer does not remember (after a restart or a cache reset)."""
        for chunk, marks in _in_chunks([trace_id.to_bytes(16, "big") for trace_id in trace_ids]):
            rows = list(
                conn.execute(
                    "SELECT trace_id, tid, start_ns, end_ns, has_root, cluster, grp, version, resource, namespace,"
                    f" name, uid FROM traces WHERE trace_id IN ({marks})",
                    chunk,
                )
            )
            for trace_key, tid, start_ns, end_ns, has_root, *ref in rows:
                seqs: dict[int, int] = dict(
                    conn.execute(
                        f"SELECT span_id, doc & {(1 << SEQ_BITS) - 1} FROM spans WHERE doc >= ? AND doc < ?",
                        (tid << SEQ_BITS, (tid + 1) << SEQ_BITS),
                    )
                )
                self._traces[int.from_bytes(trace_key, "big")] = _Trace(
                    tid, seqs, start_ns, end_ns, None if has_root else tuple(ref)
                )
                self._remembered_spans += len(seqs)

    def _insert(self, conn: apsw.Connection, batch: _Batch, positions: Iterable[int]) -> None:
        spans, trace_ids = batch.spans, batch.trace_ids
        by_trace: dict[int, list[int]] = {}
        for position in positions:
            group = by_trace.get(trace_ids[position])
            if group is None:
                by_trace[trace_ids[position]] = [position]
            else:
                group.append(position)
        count = sum(map(len, by_trace.values()))
        traces = self._traces
        unknown = [trace_id for trace_id in by_trace if trace_id not in traces]
        if len(traces) + len(unknown) > _TRACE_CACHE or self._remembered_spans + count > _SPAN_CACHE:
            traces.clear()
            self._remembered_spans = 0
            unknown = list(by_trace)
        if unknown:
            self._known_traces(conn, unknown)
        self._remembered_spans += count
        new_traces: list[tuple[Any, ...]] = []
        changed_traces: list[tuple[Any, ...]] = []
        added: dict[int, int] = {}  # positions of spans new to the store, by document, in the batch's order
        again: list[tuple[int, int]] = []  # (document, position) of spans the store has: rewritten if changed
        span_ids, starts, ends, roots = batch.span_ids, batch.starts, batch.ends, batch.roots
        for trace_id, group in by_trace.items():
            start_ns, end_ns = min(map(starts.__getitem__, group)), max(map(ends.__getitem__, group))
            found_roots = roots.intersection(group) if roots else None
            root = min(found_roots) if found_roots else None
            trace = traces.get(trace_id)
            if trace is None:
                ref = _object_columns(spans[group[0] if root is None else root].attributes)
                trace = traces[trace_id] = _Trace(self._next_tid, {}, start_ns, end_ns, None if root else ref)
                self._next_tid += 1
                new_traces.append(
                    (trace.tid, trace_id.to_bytes(16, "big"), start_ns, end_ns, 0 if root is None else 1, *ref)
                )
            else:
                named = None  # the object columns, where this batch changes them
                if trace.ref is not None:
                    if root is not None:  # the object span names the object from now on
                        named = _object_columns(spans[root].attributes)
                        trace.ref = None
                    else:  # until then the first span's; what it lacked, a later span may have (a uid)
                        ref = _object_columns(spans[group[0]].attributes)
                        if ref != trace.ref:
                            filled = tuple(old or new for old, new in zip(trace.ref, ref, strict=True))
                            if filled != trace.ref:
                                named = trace.ref = filled
                if named is not None:
                    trace.start_ns, trace.end_ns = min(trace.start_ns, start_ns), max(trace.end_ns, end_ns)
                    has_root = 1 if trace.ref is None else 0
                    changed_traces.append((trace.start_ns, trace.end_ns, has_root, *named, trace.tid))
                elif start_ns < trace.start_ns or end_ns > trace.end_ns:
                    trace.start_ns, trace.end_ns = min(trace.start_ns, start_ns), max(trace.end_ns, end_ns)
                    changed_traces.append((trace.start_ns, trace.end_ns, trace.tid))
            tid, seqs = trace.tid, trace.seqs
            first_doc = tid << SEQ_BITS
            for position in group:
                span_id = span_ids[position]
                seq = seqs.get(span_id)
                if seq is None:
                    seq = seqs[span_id] = trace.next_seq
                    trace.next_seq += 1
                    added[first_doc | seq] = position
                elif first_doc | seq in added:  # twice in this batch: the later copy wins
                    added[first_doc | seq] = position
                else:
                    again.append((first_doc | seq, position))
            if trace.next_seq > _SEQ_LIMIT:
                raise _Unrepresentable(f"trace {trace_id:032x} has more than {_SEQ_LIMIT} spans")
        _insert_rows(conn, _INSERT_TRACES, new_traces)
        conn.executemany(_UPDATE_TRACE, [row for row in changed_traces if len(row) > 3])
        conn.executemany(
            "UPDATE traces SET start_ns = ?, end_ns = ? WHERE tid = ?", [row for row in changed_traces if len(row) == 3]
        )
        # In document order: FTS5 writes out what it holds whenever a document comes before the last one (a batch
        # in the order of its traces, which a busy cluster interleaves, cost six times as much), and the spans'
        # B-tree pages are each visited once.
        new_spans = sorted(added.items())
        bodies, documents = batch.bodies, batch.documents
        first_body = self._next_body  # ids a rolled-back transaction handed out stay unused
        self._next_body += len(new_spans)
        _insert_rows(
            conn,
            _INSERT_BODIES,
            [(first_body + number, bodies[position]) for number, (_, position) in enumerate(new_spans)],
        )
        _insert_rows(
            conn,
            _INSERT_SPANS,
            [
                (doc, span_ids[position], spans[position].service, first_body + number)
                for number, (doc, position) in enumerate(new_spans)
            ],
        )
        # A span without attributes of its own is found by its trace's object tags; no document needed.
        _insert_rows(
            conn, _INSERT_TERMS_ROWS, [(doc, documents[position]) for doc, position in new_spans if documents[position]]
        )
        if again:
            self._rewrite_existing(conn, batch, again)

    def _rewrite_existing(self, conn: apsw.Connection, batch: _Batch, again: list[tuple[int, int]]) -> None:
        """Replace spans stored with other content than this batch gives them, with their index terms."""
        for doc, position in again:
            service, body = batch.spans[position].service, batch.bodies[position]
            stored = next(
                conn.execute(
                    "SELECT s.service, b.body, b.id FROM spans s JOIN bodies b ON b.id = s.body_id WHERE s.doc = ?",
                    (doc,),
                )
            )
            if stored[:2] == (service, body):
                continue
            conn.execute("UPDATE spans SET service = ? WHERE doc = ?", (service, doc))
            conn.execute("UPDATE bodies SET body = ? WHERE id = ?", (body, stored[2]))
            old_terms = self._stored_terms(stored[0], _attributes_of(stored[1]))
            if old_terms:
                conn.execute(_DELETE_TERMS, (doc, old_terms))
            if batch.documents[position]:
                conn.execute(_INSERT_TERMS, (doc, batch.documents[position]))

    def _index_batch(self, spans: list[Span]) -> list[str]:
        """Each span's document (``batch_index``, service by service), numbering new keys."""
        services = {span.service for span in spans}
        if len(services) == 1:
            return self._index_service(services.pop(), [span.attributes for span in spans])
        documents: list[str] = [""] * len(spans)
        for service in services:
            positions = [position for position, span in enumerate(spans) if span.service == service]
            service_documents = self._index_service(service, [spans[position].attributes for position in positions])
            for position, document in zip(positions, service_documents, strict=True):
                documents[position] = document
        return documents

    def _index_service(self, service: str, attributes: list[Attributes]) -> list[str]:
        caches = self._term_caches.get(service)
        if caches is None:
            caches = self._term_caches[service] = {}
        return batch_index(service, attributes, self._prefix, caches)

    def _stored_terms(self, service: str, attributes: Attributes) -> str:
        """The document a stored span was indexed with (its keys are numbered already)."""
        return index_terms(service, attributes, self._stored_prefix)

    def _prefix(self, service: str, key: str) -> str:
        prefixes = self._key_prefixes()
        prefix = prefixes.get((key, service))
        if prefix is None:
            # A key or service with no UTF-8 form (a lone surrogate) raises here, making its span unrepresentable:
            # numbered, it would fail the insert of the batch's new keys, and with it every span of the batch.
            service.encode()
            key.encode()
            key_id = len(prefixes) + 1
            prefix = prefixes[key, service] = key_prefix(key_id)
            self._new_keys.append((key_id, service, key))
        return prefix

    def _stored_prefix(self, service: str, key: str) -> str | None:
        return self._key_prefixes().get((key, service))

    def _key_prefixes(self) -> dict[tuple[str, str], str]:
        if self._prefixes is None:
            rows = self._connection().execute("SELECT key, service, id FROM term_keys")
            self._prefixes = {(key, service): key_prefix(key_id) for key, service, key_id in rows}
        return self._prefixes

    def _store_new_keys(self, conn: apsw.Connection) -> None:
        """Number the keys this batch brought, in a transaction of their own: a number, once used in a term, is
        never given to another key, even when the batch's own transaction fails."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO term_keys (id, service, key) VALUES (?, ?, ?)", self._new_keys)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._prefixes = None  # the numbers handed out are void: read again, and forget terms made with them
            self._term_caches.clear()
            raise
        finally:
            self._new_keys = []

    def _connection(self) -> apsw.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteStore is not open")
        return self._conn

    # -- reading ---------------------------------------------------------------------------------------------

    async def find_traces(self, query: TraceQuery) -> list[TraceHit]:
        if query.limit <= 0:
            return []
        return await self._read(self._find_sync, query)

    @staticmethod
    def _find_sync(conn: apsw.Connection, query: TraceQuery) -> list[TraceHit]:
        span_tags = [(key, str(value)) for key, value in query.tags.items() if key not in _OBJECT_KEY_SET]
        if not span_tags:
            return [_hit(row) for row in conn.execute(*find_traces_sql(query))]
        prefixes = SqliteStore._prefixes_of(conn, [key for key, _ in span_tags], query.service)
        if not prefixes:
            return []
        expression = match_expression(span_tags, prefixes)
        # One object's few traces are each checked for a span with the tags; else the traces of every matching
        # span are gathered in one pass over the posting lists (in C, about 0.1 µs a span) and joined.
        selective = next(((key, query.tags[key]) for key in _SELECTIVE_KEYS if key in query.tags), None)
        if (
            selective is not None
            and next(
                conn.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM traces WHERE {_COLUMN_OF[selective[0]]} = ? LIMIT ?)",
                    (str(selective[1]), _FEW_TRACES),
                )
            )[0]
            < _FEW_TRACES
        ):
            return SqliteStore._check_each(conn, query, expression)
        return [_hit(row) for row in conn.execute(*find_traces_sql(query, expression=expression))]

    @staticmethod
    def _prefixes_of(conn: apsw.Connection, keys: list[str], service: str | None) -> list[dict[str, str]]:
        """Per service (one, or every one) that has every key: each key's term prefix."""
        by_service: dict[str, dict[str, str]] = {}
        wanted = sorted(set(keys))
        sql = f"SELECT service, key, id FROM term_keys WHERE key IN ({','.join('?' * len(wanted))})"
        if service is not None:
            sql += " AND service = ?"
        for found_service, key, key_id in conn.execute(sql, [*wanted, *([service] if service is not None else [])]):
            by_service.setdefault(found_service, {})[key] = key_prefix(key_id)
        return [prefixes for _, prefixes in sorted(by_service.items()) if len(prefixes) == len(wanted)]

    @staticmethod
    def _check_each(conn: apsw.Connection, query: TraceQuery, expression: str) -> list[TraceHit]:
        """The few traces of one object, newest first, each checked for a span holding every term."""
        sql, params = find_traces_sql(dataclasses.replace(query, service=None), limited=False)
        hits: list[TraceHit] = []
        for row in list(conn.execute(sql, params)):
            tid = row[10]
            if conn.execute(
                "SELECT 1 FROM span_terms WHERE span_terms MATCH ? AND rowid >= ? AND rowid < ? LIMIT 1",
                (expression, tid << SEQ_BITS, (tid + 1) << SEQ_BITS),
            ).fetchone():
                hits.append(_hit(row))
                if len(hits) == query.limit:
                    break
        return hits

    async def find_traces_many(self, queries: Sequence[TraceQuery]) -> list[list[TraceHit]]:
        def find_all(conn: apsw.Connection) -> list[list[TraceHit]]:
            return [self._find_sync(conn, query) if query.limit > 0 else [] for query in queries]

        return await self._read(find_all)

    async def get_traces(self, trace_ids: Sequence[int]) -> dict[int, list[Span]]:
        wanted = sorted({trace_id for trace_id in trace_ids if 0 <= trace_id < 1 << 128})
        return await self._read(self._get_traces_sync, wanted) if wanted else {}

    async def get_trace(self, trace_id: int) -> list[Span]:
        if not 0 <= trace_id < 1 << 128:
            return []
        return await self._read(self._get_trace_sync, trace_id)

    def _get_trace_sync(self, conn: apsw.Connection, trace_id: int) -> list[Span]:
        return self._get_traces_sync(conn, [trace_id]).get(trace_id, [])

    def _get_traces_sync(self, conn: apsw.Connection, trace_ids: list[int]) -> dict[int, list[Span]]:
        keyed: dict[int, list[tuple[int, int, Span]]] = {}  # each span with its start and stored span id
        for chunk, marks in _in_chunks([trace_id.to_bytes(16, "big") for trace_id in trace_ids]):
            rows = list(conn.execute(spans_of_traces_sql(marks), chunk))
            trace_key = b""
            spans: list[tuple[int, int, Span]] = []
            trace_id = 0
            for key, span_id, service, body in rows:
                if key != trace_key:
                    trace_key, trace_id = key, int.from_bytes(key, "big")
                    spans = keyed.setdefault(trace_id, [])
                parent_id, name, start, end, error, message, attributes, logs = _decode_body(body)
                span = Span(
                    trace_id=trace_id,
                    span_id=_unsigned(span_id),
                    parent_id=parent_id,
                    service=service,
                    name=name,
                    start_ns=start,
                    end_ns=end,
                    error=error,
                    status_message=message,
                    attributes=attributes,
                    logs=[LogEntry(time_ns, log_name, fields) for time_ns, log_name, fields in logs] if logs else [],
                )
                spans.append((start, span_id, span))
        # Each trace's spans by start, then by stored (signed) span id, as ever.
        return {trace_id: [item[2] for item in sorted(spans, key=_first_two)] for trace_id, spans in keyed.items()}

    async def tag_values(self, key: str, start_ns: int | None = None, end_ns: int | None = None) -> list[str]:
        """Distinct values of one tag, sorted; with a time range, only from traces overlapping it."""
        return await self._read(self._tag_values_sync, key, start_ns, end_ns)

    @staticmethod
    def _tag_values_sync(conn: apsw.Connection, key: str, start_ns: int | None, end_ns: int | None) -> list[str]:
        within = (start_ns if start_ns is not None else _I64_MIN, end_ns if end_ns is not None else _I64_MAX)
        if key in _OBJECT_KEY_SET:
            # Empty is no value of a tag (a cluster-scoped object's namespace, a uid not known yet).
            column = _COLUMN_OF[key]
            rows = conn.execute(
                f"SELECT DISTINCT {column} FROM traces WHERE end_ns >= ? AND start_ns <= ? AND {column} != ''"
                f" ORDER BY {column}",
                within,
            )
            return [row[0] for row in rows]
        # Span tags are terms of the span index: per service, those that begin with the key's prefix, decoded.
        values: set[str] = set()
        for (key_id,) in list(conn.execute("SELECT id FROM term_keys WHERE key = ?", (key,))):
            prefix = key_prefix(key_id)
            after = prefix[:-1] + "y"  # the first string past every term with this prefix
            if start_ns is None and end_ns is None:
                terms = list(
                    conn.execute("SELECT term FROM span_term_list WHERE term >= ? AND term < ?", (prefix, after))
                )
            else:
                terms = list(
                    conn.execute(
                        "SELECT DISTINCT d.term FROM span_term_docs d WHERE d.term >= ? AND d.term < ?"
                        f" AND d.doc >> {SEQ_BITS} IN (SELECT tid FROM traces WHERE end_ns >= ? AND start_ns <= ?)",
                        (prefix, after, *within),
                    )
                )
            for (term,) in terms:
                encoded = term[len(prefix) :]
                if encoded.startswith("z"):
                    values.update(SqliteStore._long_values(conn, prefix, key, term))
                else:
                    values.add(bytes.fromhex(encoded).decode())
        return sorted(values)

    @staticmethod
    def _long_values(conn: apsw.Connection, prefix: str, key: str, term: str) -> list[str]:
        """The text behind a digest term, read from the attributes of one span that holds it."""
        row = conn.execute("SELECT doc FROM span_term_docs WHERE term = ? LIMIT 1", (term,)).fetchone()
        if row is None:
            return []
        body = conn.execute(
            "SELECT b.body FROM spans s JOIN bodies b ON b.id = s.body_id WHERE s.doc = ?", (row[0],)
        ).fetchone()
        attributes = _attributes_of(body[0]) if body else {}
        texts = tag_texts(attributes[key]) if key in attributes else []
        return [text for text in texts if tag_term(prefix, text) == term]

    # -- retention -------------------------------------------------------------------------------------------

    async def purge_expired(self, now_ns: int | None = None) -> int:
        """Delete traces that ended more than the retention period ago; returns how many. 0 keeps all."""
        if self.retention_ns <= 0:
            return 0
        cutoff = (now_ns if now_ns is not None else time.time_ns()) - self.retention_ns
        return await self._run(self._purge_sync, cutoff)

    def _purge_sync(self, cutoff_ns: int) -> int:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            expired = [row[0] for row in conn.execute("SELECT tid FROM traces WHERE end_ns < ?", (cutoff_ns,))]
            for tid in expired:
                # The span index is contentless and tag rows are keyed by value first: what to delete is rebuilt
                # from the trace's spans rather than found by scanning.
                documents: list[tuple[int, str]] = []
                docs = (tid << SEQ_BITS, (tid + 1) << SEQ_BITS)
                for doc, service, body in conn.execute(
                    "SELECT s.doc, s.service, b.body FROM spans s JOIN bodies b ON b.id = s.body_id"
                    " WHERE s.doc >= ? AND s.doc < ?",
                    docs,
                ):
                    terms = self._stored_terms(service, _attributes_of(body))
                    if terms:
                        documents.append((doc, terms))
                conn.executemany(_DELETE_TERMS, documents)
                conn.execute(
                    "DELETE FROM bodies WHERE id IN (SELECT body_id FROM spans WHERE doc >= ? AND doc < ?)", docs
                )
                conn.execute("DELETE FROM spans WHERE doc >= ? AND doc < ?", docs)
                conn.execute("DELETE FROM traces WHERE tid = ?", (tid,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            self._forget_uncommitted()  # purged traces must not be remembered as stored
        return len(expired)

    async def _retention_loop(self) -> None:
        while True:
            try:
                purged = await self.purge_expired()
                if purged:
                    log.info("retention: deleted %d traces from %s", purged, self.path)
            except Exception:
                log.exception("retention pass on %s failed", self.path)
            await asyncio.sleep(self._retention_check_seconds)
