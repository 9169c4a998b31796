"""spark-submit on a real Spark standalone cluster (master + two worker JVMs on 127.0.0.1), shipping the
package the way users do: ``scripts/package.sh`` builds a wheel and a packed venv, spark-submit ships
the venv with ``--archives env.tar.gz#env`` and the executors run ``./env/bin/python``. Nothing is
installed on the workers; their results must equal a classic local run.

The packed environment is cached under ``$SPARK_CLEORA_PACKAGE_CACHE`` (default
``~/.cache/spark_cleora/package``), keyed by a hash of the sources and package.sh, and package.sh keeps
the dependency venv there (``--cache-dir``), so a source change only rebuilds the wheel and repacks.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time

import pytest
from pyspark.testing import assertDataFrameEqual

from spark_cleora.errors import JavaNotFoundError
from spark_cleora.runtime.session import check_java

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SAMPLE = os.path.join(ROOT, "spark_cleora", "data", "sample_events.csv")

pytestmark = pytest.mark.slow


def _source_hash() -> str:
    h = hashlib.sha256(sys.version.encode())
    files = [os.path.join(ROOT, "pyproject.toml"), os.path.join(ROOT, "scripts", "package.sh")]
    files += sorted(glob.glob(os.path.join(ROOT, "spark_cleora", "**", "*"), recursive=True))
    for f in files:
        if os.path.isfile(f) and "__pycache__" not in f:
            h.update(os.path.relpath(f, ROOT).encode())
            h.update(open(f, "rb").read())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(archive, driver python): package.sh's output, and the archive unpacked for the client-mode driver."""
    cache = os.environ.get("SPARK_CLEORA_PACKAGE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "spark_cleora", "package")
    out = os.path.join(cache, _source_hash())
    archive = os.path.join(out, "spark_cleora-env.tar.gz")
    driver_env = os.path.join(out, "driver-env")
    if not os.path.exists(os.path.join(driver_env, ".complete")):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        # --compress-level 0: packing and six unpackings (2 executors x 3 applications) cost no deflate time
        res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "package.sh"), "--python", sys.executable,
                              "--out", out, "--compress-level", "0", "--cache-dir", os.path.join(cache, "deps")],
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        os.makedirs(driver_env)
        subprocess.run(["tar", "-xzf", archive, "-C", driver_env], check=True)  # as Spark unpacks --archives
        open(os.path.join(driver_env, ".complete"), "w").close()
        print(f"package.sh: {time.perf_counter() - t0:.1f}s")
        for old in glob.glob(os.path.join(cache, "*")):  # keep only the current build (and the deps venv)
            if old not in (out, os.path.join(cache, "deps")):
                shutil.rmtree(old, ignore_errors=True)
    assert glob.glob(os.path.join(out, "spark_cleora-*-py3-none-any.whl"))
    return archive, os.path.join(driver_env, "bin", "python")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A standalone master and two 1-core/1 GiB workers, stopped in the finalizer even on failure.

    Returns a function that waits for the cluster and gives its master URL: the daemons start in the
    background while the other fixtures (the packed environment) are prepared.
    """
    try:
        check_java()
    except JavaNotFoundError as exc:
        pytest.skip(f"no Java for a Spark cluster: {exc}")
    d = str(tmp_path_factory.mktemp("cluster"))
    script = os.path.join(ROOT, "scripts", "local_cluster.sh")
    env = dict(os.environ, PYTHON=sys.executable)
    starting = subprocess.Popen(["bash", script, "start", "--dir", d, "--workers", "2", "--cores", "1",
                                 "--memory", "1g"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    result: list[tuple[str, str]] = []

    def master_url() -> str:
        if not result:
            result.append(starting.communicate(timeout=300))
        out, err = result[0]
        if starting.returncode != 0:
            pytest.skip(f"the local standalone cluster did not start: {err.strip()[-1500:]}")
        return out.strip().splitlines()[-1]

    try:
        yield master_url
    finally:
        if not result:
            result.append(starting.communicate(timeout=300))  # let a start finish, then stop it
        subprocess.run(["bash", script, "stop", "--dir", d], capture_output=True, text=True, env=env, timeout=120)


def _submit(master: str, package, job: str, args: list[str], cwd: str) -> str:
    archive, driver_python = package
    spark_home = os.path.dirname(__import__("pyspark").__file__)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_")) and k != "PYTHONPATH"}
    env.update(SPARK_HOME=spark_home, SPARK_LOCAL_IP="127.0.0.1")
    cmd = [
        os.path.join(spark_home, "bin", "spark-submit"), "--master", master, "--deploy-mode", "client",
        "--archives", f"{archive}#env",
        "--conf", "spark.pyspark.python=./env/bin/python",  # executors: the shipped environment
        "--conf", f"spark.pyspark.driver.python={driver_python}",  # driver: the same archive, unpacked
        "--conf", "spark.executor.memory=512m", "--conf", "spark.executor.cores=1", "--conf", "spark.cores.max=2",
        "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=4",
        os.path.join(ROOT, "jobs", job), *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    return log


def test_embed_on_a_standalone_cluster_equals_local_mode(cluster, package, spark, sample_run, tmp_path):
    cluster_out = str(tmp_path / "cluster_emb")
    t0 = time.perf_counter()
    log = _submit(cluster(), package, "embed.py", [SAMPLE, *sample_run.ARGS, "--output", cluster_out], cwd=str(tmp_path))
    print(f"spark-submit embed on the cluster: {time.perf_counter() - t0:.1f}s")
    assert "Granted executor ID" in log  # executors ran in the worker JVMs
    # the one-task engine reports its iterations on the driver when the task is done (the per-iteration
    # lines go to the executor's stderr, in the worker's log directory)
    assert "iterations 1-2 in one task" in log and os.path.exists(os.path.join(cluster_out, "_SUCCESS"))
    got, ref = spark.read.parquet(cluster_out), spark.read.parquet(sample_run.output)  # vs classic local[2]
    assertDataFrameEqual(got.drop("embedding"), ref.drop("embedding"))
    diff = sample_run.max_abs_diff(cluster_out)
    print(f"cluster vs local max abs difference: {diff:.3g}")
    assert len(sample_run.vectors()) == 48 and diff <= 1e-6


def _sketch_args(coder: str, output: str) -> list[str]:
    """``emde sketch`` of the sample with ``coder`` (1-day half-life)."""
    return ["sketch", "--coder", coder, "--events", SAMPLE, "--events-format", "csv", "--customer", "user_id",
            "--item", "item", "--timestamp", "ts", "--half-life", "86400", "--output", output]


def test_emde_sketch_on_a_standalone_cluster_equals_local_mode(cluster, package, spark, sample_run, tmp_path):
    """The EMDE sketch job (the distributed one: every event) on the cluster; the coder it uses is fitted
    once locally (``emde fit`` is a separate application of its own; submitting it too would add
    another application start to the suite's time for little more coverage)."""
    from spark_cleora.cli import main

    coder = str(tmp_path / "coder")
    assert main(["emde", "fit", "--embeddings", sample_run.output, "--output", coder, "--depth", "4", "--bits", "3",
                 "--seed", "1"]) == 0
    cluster_out, local_out = str(tmp_path / "cluster_sketches"), str(tmp_path / "local_sketches")
    t0 = time.perf_counter()
    _submit(cluster(), package, "emde.py", _sketch_args(coder, cluster_out), cwd=str(tmp_path))
    print(f"spark-submit emde sketch on the cluster: {time.perf_counter() - t0:.1f}s")
    assert main(["emde", *_sketch_args(coder, local_out)]) == 0

    def sketches(out):
        return {r["customer"]: (list(r["idx"]), list(r["val"]), r["n_events"]) for r in spark.read.parquet(out).collect()}

    got, ref = sketches(cluster_out), sketches(local_out)
    assert set(got) == set(ref) and sum(n for _, _, n in ref.values()) == 6219
    diff = 0.0
    for c, (idx, val, n) in ref.items():
        assert got[c][0] == idx and got[c][2] == n
        diff = max(diff, max(abs(a - b) for a, b in zip(got[c][1], val)))
    print(f"EMDE sketches cluster vs local max abs difference: {diff:.3g}")
    assert diff <= 1e-6


def test_packaged_environment_carries_the_package_without_the_checkout(package, tmp_path):
    _, driver_python = package
    res = subprocess.run([driver_python, "-c", "import importlib.util as u; print(u.find_spec('spark_cleora').origin)"],
                         capture_output=True, text=True, cwd=str(tmp_path), env={"PATH": os.environ.get("PATH", "")})
    assert res.returncode == 0 and not res.stderr, res.stderr  # a clean interpreter start, no broken .pth
    origin = res.stdout.strip()
    assert "site-packages" in origin and not origin.startswith(ROOT), origin
