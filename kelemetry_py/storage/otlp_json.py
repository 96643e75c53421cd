"""OTLP JSON <-> raw spans, and the HTTP session the Tempo and Jaeger readers share.

Tempo writes ids in base64 (protobuf's canonical JSON), jaeger-query's api_v3 writes them in hex; Tempo spells
enums as names (``STATUS_CODE_ERROR``), Jaeger as numbers. Both decode to the same :class:`Span`.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import aiohttp
import orjson

from kelemetry_py.config import BackendConfig
from kelemetry_py.model import OBJECT_TAGS, SERVICE_OBJECT, Attributes, AttrValue, LogEntry, ObjectRef, Span

IdEncoding = Literal["base64", "hex"]
Style = Literal["tempo", "jaeger"]

STATUS_ERROR = 2
SPAN_KIND_INTERNAL = 1
SCOPE_NAME = "kelemetry"


class BackendError(RuntimeError):
    """A tracing back end answered with something we cannot use."""


def encode_id(value: int, size: int, encoding: IdEncoding) -> str:
    raw = value.to_bytes(size, "big")
    return base64.b64encode(raw).decode() if encoding == "base64" else raw.hex()


def decode_id(text: str, size: int, encoding: IdEncoding) -> int:
    try:
        raw = base64.b64decode(text, validate=True) if encoding == "base64" else bytes.fromhex(text)
    except (binascii.Error, ValueError) as exc:
        raise BackendError(f"id {text!r} is not {encoding}") from exc
    if len(raw) != size:
        raise BackendError(f"id {text!r} has {len(raw)} bytes, expected {size}")
    return int.from_bytes(raw, "big")


def parse_hex_trace_id(text: str) -> int:
    """A hex trace id as search results show it; Tempo drops leading zeros, so short ids are left-padded."""
    if not text or len(text) > 32:
        raise BackendError(f"trace id {text!r} is not up to 32 hex digits")
    try:
        return int(text.rjust(32, "0"), 16)
    except ValueError:
        raise BackendError(f"trace id {text!r} is not hexadecimal") from None


def encode_value(value: AttrValue) -> dict[str, Any]:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [{"stringValue": str(item)} for item in value]}}
    return {"stringValue": value}


def decode_value(value: Mapping[str, Any]) -> AttrValue:
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_as_text(decode_value(item)) for item in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        pairs = {
            kv["key"]: decode_value(kv.get("value", {})) for kv in value["kvlistValue"].get("values", [])
        }
        return orjson.dumps(pairs).decode()
    if "bytesValue" in value:
        return str(value["bytesValue"])
    return ""  # an empty AnyValue: OTLP allows it


def _as_text(value: AttrValue) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def encode_attributes(attributes: Mapping[str, AttrValue]) -> list[dict[str, Any]]:
    return [{"key": key, "value": encode_value(value)} for key, value in attributes.items()]


def decode_attributes(attributes: Iterable[Mapping[str, Any]] | None) -> Attributes:
    return {item["key"]: decode_value(item.get("value") or {}) for item in attributes or ()}


def _is_error(status: Mapping[str, Any] | None) -> bool:
    code = (status or {}).get("code")
    return code in (STATUS_ERROR, "STATUS_CODE_ERROR")


def decode_resource_spans(resource_spans: Iterable[Mapping[str, Any]], encoding: IdEncoding) -> list[Span]:
    """Every span in an OTLP JSON ``resourceSpans`` list (Tempo's v1 ``batches`` have the same shape)."""
    spans: list[Span] = []
    for resource_span in resource_spans:
        resource = decode_attributes((resource_span.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name", ""))
        for scope_span in (
            resource_span.get("scopeSpans") or resource_span.get("instrumentationLibrarySpans") or []
        ):
            for raw in scope_span.get("spans") or []:
                spans.append(_decode_span(raw, service, encoding))
    return spans


def _decode_span(raw: Mapping[str, Any], service: str, encoding: IdEncoding) -> Span:
    try:
        parent = raw.get("parentSpanId") or ""
        status = raw.get("status") or {}
        return Span(
            trace_id=decode_id(raw["traceId"], 16, encoding),
            span_id=decode_id(raw["spanId"], 8, encoding),
            parent_id=decode_id(parent, 8, encoding) if parent else None,
            service=service,
            name=str(raw.get("name", "")),
            start_ns=int(raw.get("startTimeUnixNano", 0)),
            end_ns=int(raw.get("endTimeUnixNano", 0)),
            attributes=decode_attributes(raw.get("attributes")),
            logs=[
                LogEntry(
                    int(event.get("timeUnixNano", 0)),
                    str(event.get("name", "")),
                    decode_attributes(event.get("attributes")),
                )
                for event in raw.get("events") or []
            ],
            error=_is_error(status),
            status_message=str(status.get("message", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"malformed OTLP span {raw.get('spanId')!r}: {exc!r}") from exc


def encode_resource_spans(spans: Sequence[Span], style: Style) -> list[dict[str, Any]]:
    """OTLP JSON ``resourceSpans`` in Tempo style (base64, enum names) or Jaeger style (hex, numbers)."""
    encoding: IdEncoding = "base64" if style == "tempo" else "hex"
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        raw: dict[str, Any] = {
            "traceId": encode_id(span.trace_id, 16, encoding),
            "spanId": encode_id(span.span_id, 8, encoding),
        }
        if span.parent_id is not None:
            raw["parentSpanId"] = encode_id(span.parent_id, 8, encoding)
        raw["name"] = span.name
        raw["kind"] = "SPAN_KIND_INTERNAL" if style == "tempo" else SPAN_KIND_INTERNAL
        raw["startTimeUnixNano"] = str(span.start_ns)
        raw["endTimeUnixNano"] = str(span.end_ns)
        raw["attributes"] = encode_attributes(span.attributes)
        if span.logs:
            raw["events"] = [
                {
                    "timeUnixNano": str(log.time_ns),
                    "name": log.name,
                    "attributes": encode_attributes(log.fields),
                }
                for log in span.logs
            ]
        status: dict[str, Any] = {}
        if span.error:
            status["code"] = "STATUS_CODE_ERROR" if style == "tempo" else STATUS_ERROR
            if span.status_message:
                status["message"] = span.status_message
        raw["status"] = status
        by_service.setdefault(span.service, []).append(raw)
    return [
        {
            "resource": {"attributes": encode_attributes({"service.name": service})},
            "scopeSpans": [{"scope": {"name": SCOPE_NAME}, "spans": raws}],
        }
        for service, raws in by_service.items()
    ]


def ref_from_attributes(attributes: Mapping[str, AttrValue]) -> ObjectRef | None:
    """The object a raw span belongs to, from its object tags; None if the span lacks them."""
    if not all(key in attributes for key in ("cluster", "resource", "name")):
        return None
    values = {key: str(attributes.get(key, "")) for key in (*OBJECT_TAGS, "uid")}
    return ObjectRef(**values)


def ref_from_spans(spans: Iterable[Span]) -> ObjectRef | None:
    """The object of a raw trace: its object span's tags, else those of any span that has them."""
    fallback: ObjectRef | None = None
    for span in spans:
        ref = ref_from_attributes(span.attributes)
        if ref is not None and span.service == SERVICE_OBJECT:
            return ref
        fallback = fallback or ref
    return fallback


def ssl_context(config: BackendConfig) -> ssl.SSLContext | bool:
    """``True`` (aiohttp's default checks) unless a CA, a client certificate or skipping is asked for."""
    if not (config.ca_file or config.client_cert_file or config.insecure_skip_verify):
        return True
    context = ssl.create_default_context(cafile=config.ca_file or None)
    if config.client_cert_file:
        context.load_cert_chain(config.client_cert_file, config.client_key_file)
    if config.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class HttpBackend:
    """A lazily opened aiohttp session bound to one back end's endpoint, headers, TLS and timeout."""

    def __init__(self, config: BackendConfig, what: str) -> None:
        if not config.endpoint:
            raise ValueError(f"{what}: no endpoint configured")
        self._config = config
        self._what = what
        self._base = config.endpoint.rstrip("/")
        self._ssl = ssl_context(config)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use so that the session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/json", **self._config.headers},
                timeout=aiohttp.ClientTimeout(total=self._config.timeout_seconds),
                connector=aiohttp.TCPConnector(ssl=self._ssl),
            )
        return self._session

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any | None:
        """The decoded JSON body, or None on 404; any other failure raises BackendError."""
        url = self._base + path
        try:
            async with self._open().get(url, params=params) as response:
                body = await response.read()
                if response.status == 404:
                    return None
                if response.status != 200:
                    snippet = body[:300].decode(errors="replace")
                    raise BackendError(f"{self._what} GET {path} answered {response.status}: {snippet}")
        except aiohttp.ClientError as exc:
            raise BackendError(f"{self._what} GET {path} failed: {exc}") from exc
        except TimeoutError as exc:
            raise BackendError(
                f"{self._what} GET {path} timed out after {self._config.timeout_seconds}s"
            ) from exc
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BackendError(f"{self._what} GET {path} did not answer JSON: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
