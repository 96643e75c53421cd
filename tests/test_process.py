"""The CPUs the process may use follow its container's CPU limit, however the cgroups are laid out; the C allocator
reuses freed memory while busy and hands it back once released; the processes run on uvloop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import uvloop

from kelemetry_py.process import cpu_quota, run_event_loop, usable_cpus


def cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return root, proc


def test_a_container_sees_its_own_v2_limit_at_the_root(tmp_path: Path) -> None:
    root, proc = cgroups(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})
    assert cpu_quota(root, proc) == 1.5
    assert usable_cpus(root, proc) == min(2, len(os.sched_getaffinity(0)))  # 1.5 CPUs' time spreads over 2


def test_the_tightest_of_a_v2_cgroup_and_its_ancestors_holds(tmp_path: Path) -> None:
    root, proc = cgroups(
        tmp_path,
        "0::/kubepods/pod1/app\n",
        {
            "kubepods/cpu.max": "200000 100000\n",
            "kubepods/pod1/cpu.max": "50000 100000\n",
            "kubepods/pod1/app/cpu.max": "max 100000\n",
        },
    )
    assert cpu_quota(root, proc) == 0.5
    assert usable_cpus(root, proc) == 1


def test_v1_cfs_quota_is_read_where_the_container_mounts_it(tmp_path: Path) -> None:
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    # Without a cgroup namespace the path names the host's cgroup, which the container sees at its mount's root.
    root, proc = cgroups(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", files)
    assert cpu_quota(root, proc) == 3.0
    assert usable_cpus(root, proc) == min(3, len(os.sched_getaffinity(0)))


def test_no_limit_leaves_the_cpus_the_process_may_run_on(tmp_path: Path) -> None:
    unlimited_v1 = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    for membership, files in (("0::/\n", {"cpu.max": "max 100000\n"}), ("1:cpu:/\n", unlimited_v1), ("0::/\n", {})):
        root, proc = cgroups(tmp_path, membership, files)
        assert cpu_quota(root, proc) is None
        assert usable_cpus(root, proc) == len(os.sched_getaffinity(0))
    assert cpu_quota(tmp_path / "none", tmp_path / "no-such-file") is None  # not Linux, or no cgroups mounted
    root, proc = cgroups(tmp_path, "garbled\n0::/\n", {"cpu.max": "200000 100000\n"})
    assert cpu_quota(root, proc) == 2.0  # a line of another shape is passed over


# Run in a fresh interpreter: the allocator's settings are the whole process's.
_ALLOCATING = """
import json, random, resource
from kelemetry_py.process import keep_freed_memory, release_free_memory, resident_bytes

keep_freed_memory()

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def batch(rng):
    # As a batch is handled: its body, and what parsing and encoding it allocate beside it, every page written;
    # then all of it freed.
    parts = [bytearray(rng.randrange(200_000, 1_000_000)) for _ in range(8)]
    for part in parts:
        part[::4096] = b"x" * len(range(0, len(part), 4096))

rng = random.Random(7)
for _ in range(20):  # the allocator's own warm-up, as after a process's first batches
    batch(rng)
before = faults()
for _ in range(100):
    batch(rng)
per_batch = (faults() - before) / 100

held = [bytearray(b"x" * (1 << 20)) for _ in range(12)]
del held  # several batches' worth freed at once, within what is kept
busy = resident_bytes()
release_free_memory()
print(json.dumps({"faults": per_batch, "freed_mib": (busy - resident_bytes()) / (1 << 20)}))
"""


def _allocating() -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _ALLOCATING], check=True, capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_freed_buffers_are_reused_while_busy_and_handed_back_once_released() -> None:
    kept = _allocating()
    # Each batch reuses the pages of the one before instead of faulting fresh ones in (with glibc's defaults, about
    # a thousand page faults per batch of this pattern; 150 per batch in the ingest process).
    assert kept["faults"] < 10
    # What a burst freed stayed with the process until released, then went back to the system.
    assert kept["freed_mib"] > 8


def test_the_processes_run_on_uvloop() -> None:
    async def loop_kind() -> type:
        return type(asyncio.get_running_loop())

    assert run_event_loop(loop_kind()) is uvloop.Loop
