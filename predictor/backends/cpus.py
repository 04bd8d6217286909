"""How many CPUs this process may really use, and how to spend them on inference.

A container sees every core of its host in `os.cpu_count()`; what it may use is its
cgroup CPU quota (Kubernetes `resources.limits.cpu`) and its CPU affinity. Sizing thread
pools from the host's core count oversubscribes a 2-CPU pod on a 64-core node 32 times.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_STREAMS = 8  # beyond this, streams get more threads instead (memory: one session each)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> float | None:
    """The cgroup CPU quota in CPUs (e.g. 1.5), or None when unlimited or unknown.

    cgroup v2: `cpu.max` ("max 100000" or "<quota> <period>"), read from the process's own
    cgroup directory when /proc/self/cgroup names one, else from the root (the usual view
    inside a container, whose cgroup namespace makes its own cgroup the root).
    cgroup v1: `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 = unlimited).
    """
    for directory in _v2_directories(root, proc_cgroup or Path("/proc/self/cgroup")):
        text = _read(directory / "cpu.max")
        if text is not None:
            fields = text.split()
            if not fields or fields[0] == "max":
                return None
            return _ratio(fields[0], fields[1] if len(fields) > 1 else "100000")
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota = _read(root / name / "cpu.cfs_quota_us")
        period = _read(root / name / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _ratio(quota, period)
    return None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """Whole CPUs this process may use: min(affinity, cgroup quota), rounded down, at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    usable = affinity if limit is None else min(affinity, limit)
    return max(1, math.floor(usable + 1e-9))


@dataclass(frozen=True)
class Parallelism:
    """How inference spends the CPUs.

    `streams` batches run at once, each on `threads_per_stream` threads; a stream that
    finds itself the only one busy (a lone request: the latency case) runs on
    `solo_threads` instead, so an idle server answers one request with every CPU and a busy
    one runs parallel single-threaded streams (the throughput case).
    """

    streams: int
    threads_per_stream: int
    solo_threads: int

    def __post_init__(self) -> None:
        for name in ("streams", "threads_per_stream", "solo_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def has_solo_lane(self) -> bool:
        return self.streams > 1 and self.solo_threads != self.threads_per_stream


def plan_parallelism(
    cpus: int,
    device_type: str = "cpu",
    streams: int | None = None,
    threads_per_stream: int | None = None,
    solo_threads: int | None = None,
) -> Parallelism:
    """Defaults from the CPU count, each overridable.

    CPU: one single-threaded stream per CPU up to MAX_STREAMS streams, more threads per
    stream beyond that (`ceil(cpus / 8)`); a lone request uses all `cpus`. Measured on a
    2-CPU machine: two streams of one thread beat one stream of two threads by 1.45x in
    throughput, while one request alone is fastest on both threads.
    CUDA: two streams (one batch's host work overlaps the other's GPU work), one CPU thread
    each (host work is decoding and NMS bookkeeping); there is no solo lane.
    """
    if device_type == "cuda":
        streams = streams or 2
        threads_per_stream = threads_per_stream or 1
        return Parallelism(streams, threads_per_stream, solo_threads or threads_per_stream)
    if streams is None and threads_per_stream is None:
        threads_per_stream = max(1, math.ceil(cpus / MAX_STREAMS))
        streams = max(1, cpus // threads_per_stream)
    elif streams is None:
        assert threads_per_stream is not None
        streams = max(1, cpus // threads_per_stream)
    elif threads_per_stream is None:
        threads_per_stream = max(1, cpus // streams)
    if solo_threads is None:
        solo_threads = max(cpus, threads_per_stream) if streams > 1 else threads_per_stream
    return Parallelism(streams, threads_per_stream, solo_threads)


def _v2_directories(root: Path, proc_cgroup: Path) -> list[Path]:
    directories = []
    text = _read(proc_cgroup)
    for line in (text or "").splitlines():
        hierarchy, _, path = line.partition("::")
        if hierarchy == "0" and path.strip() not in ("", "/"):
            directories.append(root / path.strip().lstrip("/"))
    directories.append(root)
    return directories


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p
