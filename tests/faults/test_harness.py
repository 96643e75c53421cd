"""The fault harness itself: copies are new work, the expected set is the converter's, the receiver can go away
and come back on its port."""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.sources.audit import AuditConverter, parse_batch
from tests.faults.workload import CLUSTER, POISONS, BatchRef, Workload, poison_event, with_poison
from tests.support.otlp_receiver import GrpcOtlpReceiver


def test_a_copy_expects_what_the_converter_makes_of_its_own_body(workload: Workload) -> None:
    converter = AuditConverter(AuditConfig(), RedactionConfig())
    for ref in workload.batches([0, 3]):
        converted = converter.convert(CLUSTER, parse_batch(workload.body(ref))[0])
        assert {str(obs.tags["auditID"]) for obs in converted} == workload.expected_ids([ref])
    copies = [workload.expected_ids(workload.batches([copy])) for copy in range(3)]
    assert all(copies) and not (copies[0] & copies[1]) and not (copies[1] & copies[2])
    assert len(workload.expected_ids(workload.batches(range(3)))) == 3 * len(copies[0])


def test_poison_batches_keep_their_clean_events(workload: Workload) -> None:
    ref = BatchRef(9, 0)
    clean, _ = parse_batch(workload.body(ref))
    (year_2300,) = (poison for poison in POISONS if poison.name == "year-2300")
    spliced, rejected = parse_batch(with_poison(workload.body(ref), [poison_event(workload, year_2300, "p")], 7))
    assert [event.auditID for event in spliced] == [event.auditID for event in clean]
    assert [item.index for item in rejected] == [7]
    assert "items[7].stageTimestamp: '2300-" in rejected[0].message


async def test_the_receiver_serves_again_on_its_port_after_an_outage() -> None:
    receiver = GrpcOtlpReceiver(keep_requests=False)
    await receiver.start()
    port = receiver.port
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        await receiver.stop()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                await stub.Export(request, timeout=2)
                raise AssertionError("a stopped receiver answered")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
        await receiver.start()
        assert receiver.port == port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            await stub.Export(request, timeout=5)
        assert receiver.requests == [] and receiver.failed_requests == 0
    finally:
        await receiver.stop()
