"""What this machine has now, and what each watched process uses: the memory manager's
readings (psutil and the cgroup's files), kept apart from its decisions.

Inside a container the limits that matter are the cgroup's, not the host's: a
24 GB host may give a container 2 GB, and the kernel's OOM killer acts at the
cgroup's limit. Both cgroup v2 (``memory.max``) and v1 (``memory.limit_in_bytes``)
are read, the lowest limit on the way up the hierarchy counting; "usage" leaves out
the inactive page cache, which the kernel reclaims before it kills (as
``docker stats`` does).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from lessor.core.memory_decisions import ProcessSample, SystemSample

__all__ = [
    "Cgroup",
    "ProcessSampler",
    "Resources",
    "detect",
    "parse_cgroup_paths",
    "parse_limit",
]

#: A cgroup limit at or above this means "no limit" (v1 writes 2**63 rounded to pages).
UNLIMITED = 1 << 60
_ROOT = Path("/sys/fs/cgroup")


def parse_limit(text: str) -> int | None:
    """A cgroup memory limit file's value in bytes; None for no limit."""
    value = text.strip()
    if not value or value == "max":
        return None
    number = int(value)
    return None if number >= UNLIMITED or number <= 0 else number


def parse_cgroup_paths(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}; cgroup v2's unified entry is ``""``."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _inactive_file(stat: str) -> int:
    found: dict[str, int] = {}
    for line in stat.splitlines():
        name, _, value = line.partition(" ")
        if name in ("inactive_file", "total_inactive_file") and value.strip().isdigit():
            found[name] = int(value)
    return found.get("total_inactive_file", found.get("inactive_file", 0))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


class Cgroup:
    """This process's memory cgroup: its limit and its usage, found once, read on demand."""

    def __init__(self, root: Path = _ROOT, proc_cgroup: str | None = None) -> None:
        self.limit: int | None = None
        self.version = 0
        self._usage: Path | None = None
        self._stat: Path | None = None
        if proc_cgroup is None:
            proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
        paths = parse_cgroup_paths(proc_cgroup)
        if "memory" in paths:  # v1 (the path may not exist inside a namespace: then the root)
            self._find(root / "memory", paths["memory"], "memory.limit_in_bytes",
                       "memory.usage_in_bytes", 1)  # fmt: skip
        if self.version == 0 and "" in paths:
            self._find(root, paths[""], "memory.max", "memory.current", 2)

    def _find(self, base: Path, path: str, limit_file: str, usage_file: str, version: int) -> None:
        own = base / path.lstrip("/")
        start = own if own.is_dir() else base
        if not (start / usage_file).exists() and not (start / limit_file).exists():
            return
        limits: list[int] = []
        here = start
        while True:  # the lowest limit on the way up counts
            text = _read(here / limit_file)
            limit = parse_limit(text) if text is not None else None
            if limit is not None:
                limits.append(limit)
            if here == base or base not in here.parents:
                break
            here = here.parent
        self.version = version
        self.limit = min(limits) if limits else None
        self._usage = start / usage_file
        self._stat = start / "memory.stat"

    def usage(self) -> int | None:
        """Bytes in use now, less the inactive page cache; None if unreadable."""
        if self._usage is None:
            return None
        text = _read(self._usage)
        if text is None or not text.strip().isdigit():
            return None
        stat = _read(self._stat) if self._stat is not None else None
        return max(0, int(text) - (_inactive_file(stat) if stat else 0))


def _cpu_quota(root: Path, paths: Mapping[str, str]) -> float | None:
    """CPUs the cgroup allows (quota / period); None when unlimited or unknown."""
    candidates: list[tuple[Path, str]] = []
    for controller in ("cpu", "cpu,cpuacct"):
        if controller in paths:
            candidates += [(root / controller / paths[controller].lstrip("/"), "v1"),
                           (root / controller, "v1")]  # fmt: skip
    if "" in paths:
        candidates += [(root / paths[""].lstrip("/"), "v2"), (root, "v2")]
    for where, version in candidates:
        if version == "v2":
            text = _read(where / "cpu.max")
            if text is None:
                continue
            quota_field, _, period_field = text.strip().partition(" ")
            if quota_field == "max":
                return None
            with contextlib.suppress(ValueError):
                return int(quota_field) / int(period_field or "100000")
        else:
            quota_text, period_text = (
                _read(where / "cpu.cfs_quota_us"),
                _read(where / "cpu.cfs_period_us"),
            )
            if quota_text is None or period_text is None:
                continue
            with contextlib.suppress(ValueError):
                quota = int(quota_text)
                return None if quota <= 0 else quota / int(period_text)
    return None


@dataclass(frozen=True)
class Resources:
    """What this machine (or container) has now. Memory in bytes."""

    #: CPUs this process may run on (its affinity), capped by the cgroup's CPU quota.
    cpus: int
    #: The cgroup's CPU quota in CPUs (a fraction allowed); None: no quota.
    cpu_quota: float | None
    total_memory: int
    available_memory: int
    #: The cgroup's memory limit; None: none (or not in a cgroup).
    cgroup_memory_limit: int | None
    #: The cgroup's memory in use, less inactive page cache; None without a cgroup.
    cgroup_memory_used: int | None

    @property
    def memory_limit(self) -> int:
        """What may be used in all: the cgroup's limit if lower than the total."""
        limit = self.cgroup_memory_limit
        return self.total_memory if limit is None else min(limit, self.total_memory)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory_limit": self.memory_limit}


def detect(cgroup: Cgroup | None = None, root: Path = _ROOT) -> Resources:
    """Read the machine's CPUs and memory, and the cgroup's limits, now."""
    cgroup = cgroup or Cgroup(root)
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = _cpu_quota(root, parse_cgroup_paths(_read(Path("/proc/self/cgroup")) or ""))
    cpus = affinity if quota is None else max(1, min(affinity, math.ceil(quota)))
    memory = psutil.virtual_memory()
    used = cgroup.usage() if cgroup.limit is not None else None
    return Resources(cpus, quota, int(memory.total), int(memory.available), cgroup.limit, used)


class ProcessSampler:
    """Reads the RSS (and now and then the USS) of the watched processes.

    Keeps one ``psutil.Process`` per pid while it is watched. Which pid is which
    worker comes from its supervisor, which forgets a worker the moment it exits, so a
    pid the kernel reuses later is not read as that worker.
    """

    def __init__(self, cgroup: Cgroup | None = None) -> None:
        self.cgroup = cgroup or Cgroup()
        self._procs: dict[int, psutil.Process] = {}

    def system(self) -> SystemSample:
        memory = psutil.virtual_memory()
        limit = self.cgroup.limit
        usage = self.cgroup.usage() if limit is not None else None
        return SystemSample(int(memory.total), int(memory.available), limit, usage)

    def processes(
        self, watched: Mapping[str, tuple[int, str]], uss: bool = False
    ) -> list[ProcessSample]:
        """One sample per process still alive: ``watched`` is {key: (pid, holder)}."""
        out: list[ProcessSample] = []
        alive: dict[int, psutil.Process] = {}
        for key, (pid, holder) in watched.items():
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = psutil.Process(pid)
                sample = self._read(proc, key, pid, holder, uss)
            except psutil.Error:  # gone, or not ours to read
                continue
            if not sample.rss:  # exited, not yet reaped (a zombie reads as 0, no error)
                continue
            out.append(sample)
            alive[pid] = proc
        self._procs = alive
        return out

    @staticmethod
    def _read(proc: psutil.Process, key: str, pid: int, holder: str, uss: bool) -> ProcessSample:
        if uss:
            try:
                full = proc.memory_full_info()
                return ProcessSample(key, pid, int(full.rss), int(full.uss), holder)
            except psutil.AccessDenied:  # USS needs more than RSS on some systems
                pass
        return ProcessSample(key, pid, int(proc.memory_info().rss), None, holder)
