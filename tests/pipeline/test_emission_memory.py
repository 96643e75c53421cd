"""The per-process emission set: a claim holds for its TTL, then is forgotten rather than kept for ever."""

from __future__ import annotations

from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from tests.support.clock import FakeClock


async def test_a_claim_holds_for_its_ttl_and_is_then_forgotten() -> None:
    clock = FakeClock()
    claims = MemoryEmissionSet(clock=clock)
    assert await claims.claim("obj/a@1", 10) is True
    assert await claims.claim("obj/b@1", 10) is True
    clock.now += 5
    assert await claims.claim("obj/a@1", 10) is False, "claimed 5 s ago, for 10"
    assert await claims.claim("obj/c@1", 10) is True

    clock.now += 7  # a and b have expired, c has not
    assert await claims.claim("obj/d@2", 10) is True
    assert len(claims) == 2, "expired claims are dropped, not kept until max_entries"
    assert await claims.claim("obj/c@1", 10) is False
    assert await claims.claim("obj/a@1", 10) is True


async def test_past_max_entries_the_oldest_claims_go_first() -> None:
    claims = MemoryEmissionSet(max_entries=2, clock=FakeClock())
    for key in ("a", "b", "c"):
        assert await claims.claim(key, 60) is True
    assert len(claims) == 2
    assert await claims.claim("a", 60) is True, "the oldest went: it may be claimed (and its span written) again"
    assert await claims.claim("c", 60) is False
