"""The embedded JVM's class-data-sharing cache: created once, used after, never half-written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spark_cleora.runtime import session
from spark_cleora.runtime.session import CLASS_CACHE_ENV, check_java, class_cache_dir, class_cache_options

SCRIPT = """
from spark_cleora.runtime.session import get_spark
spark = get_spark(master="local[1]", conf={"spark.ui.enabled": "false"})
assert spark.range(5).count() == 5
print("jvm options:", spark.sparkContext.getConf().get("spark.driver.extraJavaOptions", ""))
"""


def test_disabled_by_env(monkeypatch):
    for off in ("0", "off", "false"):
        monkeypatch.setenv(CLASS_CACHE_ENV, off)
        assert class_cache_dir() is None
        assert class_cache_options({}) == ("", None)


def test_dump_first_then_share_keyed_by_class_path(monkeypatch, tmp_path):
    check_java()
    monkeypatch.setenv(CLASS_CACHE_ENV, str(tmp_path))
    options, pending = class_cache_options({})
    assert "-XX:ArchiveClassesAtExit=" in options and pending and pending.endswith(".tmp")
    assert pending.startswith(str(tmp_path)) and str(os.getpid()) in pending
    final = pending.rsplit(".", 2)[0]
    open(final, "wb").write(b"x")
    options, pending = class_cache_options({})
    assert options.startswith(f"-XX:SharedArchiveFile={final} ") and pending is None
    # another class path (extra jars) is another archive: a mismatched one would be ignored by the JVM
    other, pending = class_cache_options({"spark.jars": "/opt/extra.jar"})
    assert "ArchiveClassesAtExit" in other and pending and not pending.startswith(final)


def test_no_java_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(CLASS_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(session, "_JAVA_SEEN", {})
    assert class_cache_options({}) == ("", None)


@pytest.mark.slow
def test_first_process_writes_the_archive_and_the_next_uses_it(tmp_path):
    env = dict(os.environ, **{CLASS_CACHE_ENV: str(tmp_path)}, PYSPARK_PYTHON=sys.executable)
    env.pop("PYSPARK_GATEWAY_PORT", None)
    first = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "ArchiveClassesAtExit" in first.stdout and "[cds]" not in first.stderr  # dumped quietly
    archives = os.listdir(tmp_path)
    assert len(archives) == 1 and archives[0].endswith(".jsa"), archives  # published, no .tmp left behind
    size = os.path.getsize(tmp_path / archives[0])
    assert size > 1_000_000
    second = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"-XX:SharedArchiveFile={tmp_path / archives[0]}" in second.stdout
    assert "[cds]" not in second.stderr  # the JVM accepted the archive quietly
    assert os.listdir(tmp_path) == archives and os.path.getsize(tmp_path / archives[0]) == size


def test_local_driver_gets_the_throughput_collector_unless_the_user_names_one():
    cache = "-XX:SharedArchiveFile=/c.jsa"
    assert session.driver_java_options("", "local[2]", cache) == f"{session.LOCAL_GC} {cache}"
    assert session.driver_java_options("-Dx=1", "local[*]", "") == f"-Dx=1 {session.LOCAL_GC}"
    # the user's collector wins (two collectors would stop the JVM), and clusters keep their own
    assert session.driver_java_options("-XX:+UseG1GC", "local[2]", cache) == f"-XX:+UseG1GC {cache}"
    assert session.driver_java_options("", "spark://h:7077", "") == ""
