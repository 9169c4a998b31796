"""Local defaults follow a container's memory limit, not only the host's RAM."""

from __future__ import annotations

import pytest

from spark_cleora import machine
from spark_cleora.machine import cgroup_memory_limit


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_of_the_group_or_an_ancestor(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "0::/kubepods/pod1/ctr\n")
    _write(tmp_path / "fs/kubepods/pod1/ctr/memory.max", "max\n")
    _write(tmp_path / "fs/kubepods/pod1/memory.max", str(6 * 2**30))
    _write(tmp_path / "fs/kubepods/memory.max", str(8 * 2**30))
    assert cgroup_memory_limit(proc_cgroup=str(proc), root=str(tmp_path / "fs")) == 6 * 2**30


def test_cgroup_v1_limit_and_unlimited(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n")
    _write(tmp_path / "fs/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    assert cgroup_memory_limit(proc_cgroup=str(proc), root=str(tmp_path / "fs")) is None
    _write(tmp_path / "fs/memory/memory.limit_in_bytes", str(3 * 2**30))  # the container's limit at the mount's root
    assert cgroup_memory_limit(proc_cgroup=str(proc), root=str(tmp_path / "fs")) == 3 * 2**30


def test_no_cgroup_information_means_no_limit(tmp_path):
    assert cgroup_memory_limit(proc_cgroup=str(tmp_path / "missing")) is None


@pytest.mark.parametrize("limit_gib, driver, worker", [(None, None, None), (4, "2g", 1.0), (12, "6g", 3.0)])
def test_local_driver_and_worker_memory_follow_the_limit(monkeypatch, limit_gib, driver, worker):
    from spark_cleora import one_task, session

    physical = 64 * 2**30
    monkeypatch.setattr(machine, "physical_memory_bytes", lambda: physical)
    monkeypatch.setattr(machine, "cgroup_memory_limit", lambda: limit_gib and limit_gib * 2**30)
    monkeypatch.setattr(session, "memory_bytes", machine.memory_bytes)
    monkeypatch.setattr(one_task, "memory_bytes", machine.memory_bytes)

    class Conf:
        def get(self, key, default=None):
            return "local[2]" if key == "spark.master" else default

    class Spark:
        conf = Conf()

    conf = session._local_defaults("local[2]")
    assert conf["spark.driver.memory"] == (driver or "32g")  # half the memory, at most 32 GiB
    assert one_task.worker_memory_gb(Spark()) == (worker or 16.0)  # a quarter
