"""Local defaults follow a container's memory limit, not only the host's RAM."""

from __future__ import annotations

import pytest

from spark_cleora.runtime import machine
from spark_cleora.runtime.machine import cgroup_memory_limit


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


@pytest.mark.parametrize("master, limit_gib, driver, worker, one_task", [
    ("local[2]", None, "32g", 15.5, 31.0),  # 64 GiB: half to the driver (at most 32), (64 - 32 - 1) / 2 per worker
    ("local[2]", 12, "6g", 2.5, 5.0),       # a 12 GiB container: (12 - 6 - 1) / 2; the one task alone: 5
    ("local[2]", 4, "2g", 0.5, 1.0),        # 4 GiB: the driver's 2 GiB floor; workers at their 0.5 floor
    ("local[8]", 24, "12g", 1.4, 11.0),     # eight workers split what is left: (24 - 12 - 1) / 8
    ("local[1]", 24, "12g", 6.0, 11.0),     # one worker: capped at a quarter of the memory (not the one task)
])
def test_local_driver_and_worker_memory_follow_the_limit(monkeypatch, master, limit_gib, driver, worker, one_task):
    """Driver heap plus every worker's budget stays within the memory (RAM or the cgroup's limit); the
    one-task engine's task, which runs alone, gets what the workers would share."""
    from spark_cleora.runtime import session

    physical = 64 * 2**30
    monkeypatch.setattr(machine, "physical_memory_bytes", lambda: physical)
    monkeypatch.setattr(machine, "cgroup_memory_limit", lambda: limit_gib and limit_gib * 2**30)
    monkeypatch.setattr(session, "memory_bytes", machine.memory_bytes)

    class Conf:
        def get(self, key, default=None):
            return master if key == "spark.master" else default

    class Spark:
        conf = Conf()

    conf = session._local_defaults(master)
    assert conf["spark.driver.memory"] == driver
    assert conf["spark.cleaner.periodicGC.interval"] == "1min"  # the shuffle engine's old shuffles go soon
    got = machine.worker_memory_gb(Spark())
    assert got == worker
    assert machine.one_task_memory_gb(Spark()) == one_task
    assert int(driver[:-1]) + one_task + machine.LOCAL_RESERVE_GIB <= (limit_gib or 64)
    total = (limit_gib or 64)
    cores = int(master[6:-1])
    if worker > 0.5:  # above the floor, the budgets fit the memory
        assert int(driver[:-1]) + cores * got <= total


def test_local_cores_and_memory_cgroups(tmp_path, monkeypatch):
    from spark_cleora.runtime import session
    from spark_cleora.runtime.machine import local_cores, memory_cgroups

    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert (local_cores("local[3]"), local_cores("local[*]"), local_cores("local")) == (3, 6, 6)
    assert (session._cores("local[1]"), session._cores("local[4]")) == (2, 4)  # shuffle partitions: at least 2
    proc = tmp_path / "cgroup"
    _write(proc, "5:cpu,cpuacct:/x\n4:cpuset,memory:/docker/abc\n0::/user.slice\n")
    assert memory_cgroups(proc_cgroup=str(proc)) == {"v1": "/docker/abc", "v2": "/user.slice"}


def test_off_local_mode_both_budgets_are_the_default():
    """A cluster's executors are not this machine: the worker and the one-task budgets are the 4 GiB default."""
    class Conf:
        def get(self, key, default=None):
            return "spark://host:7077" if key == "spark.master" else default

    class Spark:
        conf = Conf()

    assert machine.worker_memory_gb(Spark()) == machine.one_task_memory_gb(Spark()) == machine.DEFAULT_WORKER_GB == 4.0


@pytest.mark.parametrize("conf, slots", [
    ({"spark.master": "local[3]"}, 3),
    ({"spark.master": "spark://host:7077", "spark.cores.max": "6", "spark.sql.shuffle.partitions": "200"}, 6),
    ({"spark.master": "yarn", "spark.executor.instances": "4", "spark.executor.cores": "5"}, 20),
    ({"spark.master": "yarn", "spark.executor.instances": "4", "spark.sql.shuffle.partitions": "64"}, 64),
    ({"spark.master": "k8s://x", "spark.cores.max": "n/a", "spark.sql.shuffle.partitions": "8"}, 8),
])
def test_task_slots_from_the_configuration(conf, slots):
    assert machine.task_slots(_session_with(conf)) == slots


def _session_with(conf: dict):
    """A stand-in session whose ``conf.get`` reads ``conf`` (and raises for a missing key without a default,
    as Spark does)."""
    class Conf:
        def get(self, key, default=None):
            if key not in conf and default is None:
                raise KeyError(key)
            return conf.get(key, default)

    class Spark:
        pass

    spark = Spark()
    spark.conf = Conf()
    return spark


@pytest.mark.parametrize("conf, partitions, groups", [
    ({"spark.master": "local[2]", "spark.sql.shuffle.partitions": "4"}, 4, 2),  # the slots are fewer
    ({"spark.master": "spark://h:7077", "spark.cores.max": "32", "spark.sql.shuffle.partitions": "8"}, 8, 8),
    ({"spark.master": "local[4]", "spark.sql.shuffle.partitions": "oops"}, 8, 4),  # unreadable: 8
])
def test_shuffle_partitions_and_the_multiply_parallelism(conf, partitions, groups):
    spark = _session_with(conf)
    assert machine.shuffle_partitions(spark) == partitions
    assert machine.group_parallelism(spark) == groups
