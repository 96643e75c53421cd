"""The CPUs the process may use follow its container's CPU limit, however the cgroups are laid out."""

from __future__ import annotations

import os
from pathlib import Path

from kelemetry_py.process import cpu_quota, usable_cpus


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
