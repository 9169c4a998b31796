"""What this machine gives an embedded (local) Spark: its RAM, or less when a container says so.

A container (Docker, Kubernetes, a CI runner, a systemd slice) limits memory with a cgroup, while
``sysconf`` still reports the host's RAM. Sizing the driver heap and the Python workers from the host
would get the job killed by the kernel, so the local defaults use the smaller of the two.

Also the memory budget of one Python worker (``--block-memory-gb``'s default), which sizes the blocks,
and the one-task engine's, which chooses the engine.
"""

from __future__ import annotations

import math

import os
import re
from typing import Any

#: a cgroup "limit" at or above this is no limit (v1 reports unlimited as ~2^63)
_NO_LIMIT = 1 << 60


def physical_memory_bytes() -> int | None:
    """The machine's RAM from ``sysconf``; None where it is not available."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_cgroups(*, proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """This process's memory cgroup paths, from ``/proc/self/cgroup``: ``{"v2": path}`` for the unified
    hierarchy, ``{"v1": path}`` for a v1 memory controller (either or both; empty when unreadable)."""
    try:
        with open(proc_cgroup) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 unified hierarchy
            found["v2"] = path
        elif "memory" in controllers.split(","):
            found["v1"] = path
    return found


def cgroup_memory_limit(*, proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The tightest memory limit of this process's cgroup and its ancestors (cgroup v2 ``memory.max``,
    v1 ``memory.limit_in_bytes``); None when there is none or it cannot be read."""
    candidates: list[str] = []
    for version, path in memory_cgroups(proc_cgroup=proc_cgroup).items():
        if version == "v2":
            base, name = root, "memory.max"
        else:
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        # this group and every ancestor up to the root of the mount (inside a container the group's
        # path is often not visible, and the container's own limit sits at the mount's root)
        rel = path.strip("/")
        while True:
            candidates.append(os.path.join(base, rel, name) if rel else os.path.join(base, name))
            if not rel:
                break
            rel = os.path.dirname(rel)
    limits = []
    for f in dict.fromkeys(candidates):
        try:
            with open(f) as fh:
                value = fh.read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < _NO_LIMIT:
            limits.append(int(value))
    return min(limits) if limits else None


def memory_bytes() -> int | None:
    """Memory this process may use: the machine's RAM, or a cgroup limit below it."""
    known = [b for b in (physical_memory_bytes(), cgroup_memory_limit()) if b]
    return min(known) if known else None


#: an embedded local driver's heap: this share of the memory, within these bounds (GiB)
LOCAL_DRIVER_SHARE, LOCAL_DRIVER_GIB = 0.5, (2, 32)
#: memory left to the JVM's own overheads and the OS beside the heap and the workers (GiB)
LOCAL_RESERVE_GIB = 1.0
#: a local Python worker's budget: at most this share of the memory, at least this many GiB
LOCAL_WORKER_SHARE, LOCAL_WORKER_MIN_GIB = 0.25, 0.5


def local_cores(master: str) -> int:
    """Task slots of a local master: ``local[4]`` -> 4; ``local[*]`` / ``local`` -> this machine's cores."""
    m = re.match(r"local\[(\d+)", master or "")
    return int(m.group(1)) if m else (os.cpu_count() or 1)


def local_driver_gib(total: int) -> int:
    """The driver heap of an embedded local Spark, from the memory it may use."""
    low, high = LOCAL_DRIVER_GIB
    return max(low, min(high, int(total / 2**30 * LOCAL_DRIVER_SHARE)))


def local_worker_gib(total: int, cores: int) -> float:
    """A Python worker's budget beside an embedded local driver: ``local[N]`` runs N workers at once,
    so they split what the driver's heap and a reserve leave, none getting more than
    ``LOCAL_WORKER_SHARE`` of the memory nor less than ``LOCAL_WORKER_MIN_GIB``."""
    left = total / 2**30 - local_driver_gib(total) - LOCAL_RESERVE_GIB
    return max(LOCAL_WORKER_MIN_GIB, round(min(total / 2**30 * LOCAL_WORKER_SHARE, left / max(cores, 1)), 1))


#: memory a Python worker may use by default (``--block-memory-gb``) off local mode; local mode:
#: :func:`local_worker_gib`
DEFAULT_WORKER_GB = 4.0


def _local_memory(spark: Any) -> tuple[int, int] | None:
    """(memory bytes, task slots) of an embedded local master, else None."""
    try:
        master = str(spark.conf.get("spark.master", ""))
    except Exception:  # e.g. a Connect server that does not show its master
        master = ""
    total = memory_bytes() if master.startswith("local") else None
    return (total, local_cores(master)) if total else None


def worker_memory_gb(spark: Any) -> float:
    """The default ``--block-memory-gb``: 4, or for a local master ``local[N]`` what the driver's heap
    (half the memory this machine or its container gives the process) and a 1 GiB reserve leave,
    split over the N Python workers that run at once, and at most a quarter of the memory."""
    local = _local_memory(spark)
    return local_worker_gib(*local) if local else DEFAULT_WORKER_GB


def one_task_memory_gb(spark: Any) -> float:
    """The one-task engine's default budget: :func:`worker_memory_gb`, except beside an embedded local
    driver, where its task is the only one running (its job has one task) and may use all that the N
    workers would share: the memory less the driver's heap and the reserve."""
    local = _local_memory(spark)
    if not local:
        return DEFAULT_WORKER_GB
    total, cores = local
    left = total / 2**30 - local_driver_gib(total) - LOCAL_RESERVE_GIB
    return max(local_worker_gib(total, cores), math.floor(left * 10) / 10)  # (rounded down)


def shuffle_partitions(spark: Any) -> int:
    """``spark.sql.shuffle.partitions`` (at least 1; 8 when the session does not show it)."""
    try:
        return max(1, int(spark.conf.get("spark.sql.shuffle.partitions")))
    except Exception:
        return 8


def group_parallelism(spark: Any) -> int:
    """Tasks the shuffle engine's multiply should keep busy: the task slots or the shuffle partitions,
    whichever is fewer (see :func:`spark_cleora.engine.graph.block_groups`)."""
    return min(shuffle_partitions(spark), task_slots(spark))


def task_slots(spark: Any) -> int:
    """Tasks the session runs at once, as far as its configuration says (no SparkContext: Connect-safe):
    ``local[N]`` -> N; ``spark.cores.max`` (standalone, Mesos); ``spark.executor.instances`` x
    ``spark.executor.cores``; else ``spark.sql.shuffle.partitions`` (e.g. with dynamic allocation)."""
    def conf(key: str) -> int:
        try:
            return int(spark.conf.get(key, "0") or 0)
        except Exception:  # not a number, or a Connect server that does not show a static conf
            return 0

    try:
        master = str(spark.conf.get("spark.master", ""))
    except Exception:
        master = ""
    if master.startswith("local"):
        return local_cores(master)
    slots = conf("spark.cores.max") or conf("spark.executor.instances") * conf("spark.executor.cores")
    return slots if slots > 0 else max(1, conf("spark.sql.shuffle.partitions"))
