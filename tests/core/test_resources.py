"""lessor.resources: cgroup files parsed, fake cgroup v1 and v2 trees read, this machine
detected, and processes sampled with psutil."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lessor.core.memory_decisions import ProcessSample, SystemSample
from lessor.resources import (
    UNLIMITED,
    Cgroup,
    ProcessSampler,
    Resources,
    _cpu_quota,
    detect,
    parse_cgroup_paths,
    parse_limit,
)

GB = 1 << 30


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- parse_limit, parse_cgroup_paths -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("max", None),  # v2: no limit
        ("max\n", None),
        ("9223372036854771712", None),  # v1: 2**63 rounded down to pages
        ("9223372036854771712\n", None),
        (str(UNLIMITED), None),
        ("1073741824\n", GB),
        ("  536870912  \n", GB // 2),
        (str(UNLIMITED - 1), UNLIMITED - 1),
        ("4096", 4096),
        ("", None),
        ("\n", None),
        ("0", None),
        ("-1", None),  # v1's "no limit" on some kernels
    ],
)
def test_parse_limit(text: str, limit: int | None) -> None:
    assert parse_limit(text) == limit


def test_parse_cgroup_paths_v1_and_hybrid() -> None:
    text = (
        "12:pids:/docker/abc\n"
        "4:memory:/docker/abc\n"
        "2:cpu,cpuacct:/x\n"
        "1:name=systemd:/docker/abc\n"
        "0::/user.slice\n"
    )
    assert parse_cgroup_paths(text) == {
        "pids": "/docker/abc",
        "memory": "/docker/abc",
        "cpu": "/x",
        "cpuacct": "/x",
        "name=systemd": "/docker/abc",
        "": "/user.slice",
    }


def test_parse_cgroup_paths_v2() -> None:
    assert parse_cgroup_paths("0::/user.slice\n") == {"": "/user.slice"}
    assert parse_cgroup_paths("0::/\n") == {"": "/"}


def test_parse_cgroup_paths_skips_what_it_cannot_read() -> None:
    text = "\n  \ngarbage\n3:memory\n5:blkio:/a:b\n"  # a path may hold a colon
    assert parse_cgroup_paths(text) == {"blkio": "/a:b"}
    assert parse_cgroup_paths("") == {}


# -- Cgroup on fake trees ------------------------------------------------------------------


def test_cgroup_v2_reads_limit_and_usage_less_inactive_file(tmp_path: Path) -> None:
    write(tmp_path, "a/b/memory.max", "max\n")
    write(tmp_path, "a/b/memory.current", "500000\n")
    write(tmp_path, "a/b/memory.stat", "anon 123\nfile 400000\ninactive_file 100000\n")
    write(tmp_path, "a/memory.max", "1073741824\n")  # the parent's limit counts
    cgroup = Cgroup(root=tmp_path, proc_cgroup="0::/a/b\n")
    assert cgroup.version == 2
    assert cgroup.limit == GB
    assert cgroup.usage() == 400_000
    write(tmp_path, "a/b/memory.current", "700000\n")  # read on demand
    assert cgroup.usage() == 600_000


@pytest.mark.parametrize(
    ("own", "parent", "limit"),
    [
        (str(2 * GB), str(GB), GB),  # a parent with a lower limit wins
        (str(GB), str(2 * GB), GB),
        (str(GB), "max", GB),
        ("max", "max", None),
        ("max", "", None),  # an empty file: no limit
    ],
)
def test_cgroup_v2_the_lowest_limit_on_the_way_up_counts(
    tmp_path: Path, own: str, parent: str, limit: int | None
) -> None:
    write(tmp_path, "a/b/c/memory.max", own)
    write(tmp_path, "a/b/c/memory.current", "1")
    write(tmp_path, "a/memory.max", parent)
    cgroup = Cgroup(root=tmp_path, proc_cgroup="0::/a/b/c")
    assert (cgroup.version, cgroup.limit) == (2, limit)


def test_cgroup_v2_never_reads_above_its_root(tmp_path: Path) -> None:
    write(tmp_path, "memory.max", "4096")  # outside the cgroup root: not ours
    root = tmp_path / "cgroup"
    write(root, "x/memory.max", str(GB))
    write(root, "x/memory.current", "10")
    assert Cgroup(root=root, proc_cgroup="0::/x").limit == GB


def test_cgroup_v2_usage_without_stat_or_unreadable(tmp_path: Path) -> None:
    write(tmp_path, "s/memory.max", str(GB))
    write(tmp_path, "s/memory.current", "2048\n")
    cgroup = Cgroup(root=tmp_path, proc_cgroup="0::/s")
    assert cgroup.usage() == 2048  # no memory.stat: nothing to take off
    write(tmp_path, "s/memory.stat", "inactive_file 4096\n")
    assert cgroup.usage() == 0  # never below zero
    write(tmp_path, "s/memory.current", "n/a\n")
    assert cgroup.usage() is None
    (tmp_path / "s" / "memory.current").unlink()
    assert cgroup.usage() is None


def test_cgroup_v2_path_missing_falls_back_to_the_root(tmp_path: Path) -> None:
    write(tmp_path, "memory.max", str(3 * GB))
    write(tmp_path, "memory.current", "1000")
    cgroup = Cgroup(root=tmp_path, proc_cgroup="0::/not/here\n")
    assert (cgroup.version, cgroup.limit, cgroup.usage()) == (2, 3 * GB, 1000)


def test_cgroup_v1_reads_limit_and_usage_less_total_inactive_file(tmp_path: Path) -> None:
    own = "memory/docker/abc"
    write(tmp_path, f"{own}/memory.limit_in_bytes", "9223372036854771712\n")
    write(tmp_path, f"{own}/memory.usage_in_bytes", "800000\n")
    stat = "cache 5\ninactive_file 999\ntotal_inactive_file 300000\n"  # the total counts
    write(tmp_path, f"{own}/memory.stat", stat)
    write(tmp_path, "memory/docker/memory.limit_in_bytes", str(2 * GB))
    write(tmp_path, "memory/memory.limit_in_bytes", "9223372036854771712\n")
    proc = "12:pids:/docker/abc\n4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n"
    cgroup = Cgroup(root=tmp_path, proc_cgroup=proc)
    assert cgroup.version == 1
    assert cgroup.limit == 2 * GB
    assert cgroup.usage() == 500_000


def test_cgroup_v1_uses_inactive_file_without_a_total(tmp_path: Path) -> None:
    write(tmp_path, "memory/g/memory.limit_in_bytes", str(GB))
    write(tmp_path, "memory/g/memory.usage_in_bytes", "800000")
    write(tmp_path, "memory/g/memory.stat", "inactive_file 1000\nbogus line\n")
    assert Cgroup(root=tmp_path, proc_cgroup="4:memory:/g").usage() == 799_000


def test_cgroup_v1_path_missing_in_a_namespace_falls_back_to_the_controller_root(
    tmp_path: Path,
) -> None:
    """Inside a container's cgroup namespace /proc/self/cgroup may still name the host's
    path, while /sys/fs/cgroup/memory is the container's own cgroup."""
    write(tmp_path, "memory/memory.limit_in_bytes", "536870912\n")
    write(tmp_path, "memory/memory.usage_in_bytes", "300000\n")
    write(tmp_path, "memory/memory.stat", "total_inactive_file 100000\n")
    cgroup = Cgroup(root=tmp_path, proc_cgroup="4:memory:/docker/0123456789abcdef\n")
    assert (cgroup.version, cgroup.limit, cgroup.usage()) == (1, GB // 2, 200_000)


def test_cgroup_v1_named_but_absent_falls_through_to_v2(tmp_path: Path) -> None:
    write(tmp_path, "u/memory.max", str(GB))
    write(tmp_path, "u/memory.current", "5")
    cgroup = Cgroup(root=tmp_path, proc_cgroup="4:memory:/u\n0::/u\n")
    assert (cgroup.version, cgroup.limit, cgroup.usage()) == (2, GB, 5)


def test_no_cgroup_files_no_cgroup(tmp_path: Path) -> None:
    for proc in ("0::/\n", "4:memory:/docker/abc\n", "", "garbage"):
        cgroup = Cgroup(root=tmp_path, proc_cgroup=proc)
        assert (cgroup.version, cgroup.limit, cgroup.usage()) == (0, None, None), proc


# -- CPU quota -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "paths", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, {"": "/"}, 1.5),
        ({"cpu.max": "max 100000\n"}, {"": "/"}, None),
        ({"k/cpu.max": "50000 100000\n", "cpu.max": "max 100000"}, {"": "/k"}, 0.5),
        (
            {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"},
            {"cpu": "/"},
            2.0,
        ),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, {"cpu": "/"}, None),
        ({}, {"": "/", "cpu": "/"}, None),
    ],
)
def test_cpu_quota(
    tmp_path: Path, files: dict[str, str], paths: dict[str, str], quota: float | None
) -> None:
    for relative, text in files.items():
        write(tmp_path, relative, text)
    assert _cpu_quota(tmp_path, paths) == quota


# -- detect --------------------------------------------------------------------------------


def test_detect_on_this_machine() -> None:
    r = detect()
    assert isinstance(r.cpus, int) and r.cpus >= 1
    assert r.cpus <= (os.cpu_count() or r.cpus)
    assert r.cpu_quota is None or r.cpu_quota > 0
    assert r.total_memory >= r.available_memory > 0
    assert 0 < r.memory_limit <= r.total_memory
    if r.cgroup_memory_limit is not None:
        assert r.cgroup_memory_limit > 0
        assert r.cgroup_memory_used is None or r.cgroup_memory_used >= 0
    else:
        assert r.cgroup_memory_used is None
    d = r.as_dict()
    assert d["memory_limit"] == r.memory_limit and d["cpus"] == r.cpus
    assert set(d) >= {"cpus", "cpu_quota", "total_memory", "available_memory"}


def test_detect_with_a_cgroup_limit(tmp_path: Path) -> None:
    write(tmp_path, "c/memory.max", str(GB))
    write(tmp_path, "c/memory.current", "3000000")
    write(tmp_path, "c/memory.stat", "inactive_file 1000000\n")
    r = detect(Cgroup(root=tmp_path, proc_cgroup="0::/c"), root=tmp_path)
    assert (r.cgroup_memory_limit, r.cgroup_memory_used) == (GB, 2_000_000)
    assert r.memory_limit == min(GB, r.total_memory)
    assert r.cpu_quota is None  # no cpu files under this root
    assert r.cpus == len(os.sched_getaffinity(0))


def test_resources_memory_limit_is_the_lower() -> None:
    r = Resources(2, None, 16 * GB, 8 * GB, 2 * GB, GB)
    assert r.memory_limit == 2 * GB
    assert Resources(2, None, 16 * GB, 8 * GB, 64 * GB, GB).memory_limit == 16 * GB
    assert Resources(2, None, 16 * GB, 8 * GB, None, None).memory_limit == 16 * GB


# -- ProcessSampler ------------------------------------------------------------------------


def test_process_sampler_reads_this_process_and_leaves_out_an_exited_one(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert child.wait(timeout=30) == 0  # exited and reaped: its pid is no process now
    sampler = ProcessSampler(Cgroup(root=tmp_path, proc_cgroup=""))
    watched = {"me": (os.getpid(), ""), "gone": (child.pid, "hgone")}
    samples = sampler.processes(watched, uss=True)
    assert [s.key for s in samples] == ["me"]
    (me,) = samples
    assert isinstance(me, ProcessSample)
    assert (me.pid, me.holder) == (os.getpid(), "")
    assert me.rss > 0
    assert me.uss is not None and 0 < me.uss <= me.rss
    again = sampler.processes({"me": (os.getpid(), "holder")})  # RSS only
    assert len(again) == 1 and again[0].uss is None and again[0].rss > 0
    assert again[0].holder == "holder"
    assert sampler.processes({}) == []


def test_process_sampler_system_reads_the_cgroup(tmp_path: Path) -> None:
    plain = ProcessSampler(Cgroup(root=tmp_path, proc_cgroup="")).system()
    assert isinstance(plain, SystemSample)
    assert plain.total >= plain.available > 0
    assert (plain.cgroup_limit, plain.cgroup_usage) == (None, None)
    assert plain.limit == plain.total
    write(tmp_path, "c/memory.max", str(GB))
    write(tmp_path, "c/memory.current", "4096")
    boxed = ProcessSampler(Cgroup(root=tmp_path, proc_cgroup="0::/c")).system()
    assert (boxed.cgroup_limit, boxed.cgroup_usage) == (GB, 4096)
    assert boxed.limit == min(GB, boxed.total) and boxed.used == 4096
