"""The library, the CLI and table output on a Spark Connect session (Databricks serverless and
standard-access clusters are Connect), compared with the classic session and with pycleora.

One subprocess runs every Connect case against one local Connect server (a process holds either a
classic or a Connect session, and the suite's fixture is classic); ``--remote local[2]`` starts the
server, as users do. The cases are then checked one by one. The whole suite can also run on Connect:
``SPARK_CLEORA_TEST_MODE=connect pytest`` (see tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from oracle import random_hyperedges, reference

from spark_cleora.demo import sample_path

pytest.importorskip("grpc", reason="pyspark[connect] extras are not installed")

SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pyspark.sql import SparkSession
    from spark_cleora import embed
    from spark_cleora.cli import main
    from spark_cleora.runtime.session import is_remote
    from spark_cleora.storage.tables import write_table

    out, sample, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    remote = ["--remote", "local[2]", "--conf", "spark.sql.shuffle.partitions=4"]
    res = {}

    def cli(*argv):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main([*argv, *remote])
        return rc, buf.getvalue()

    # the CLI: embed, similar, inspect (--remote starts the local Connect server)
    res["embed_rc"], _ = cli("embed", sample, *args, "--output", out + "/emb")
    spark = SparkSession.getActiveSession()
    res["remote"] = is_remote(spark)
    rc, text = cli("similar", "--embeddings", out + "/emb", "--entity", "coffee:espresso-beans", "--k", "5", "--json")
    res["similar"] = [rc, [json.loads(line) for line in text.splitlines()]]
    rc, _ = cli("inspect", out + "/emb", "--json-out", out + "/inspect.json", "--plot", out + "/plot.png")
    res["inspect_rc"] = rc

    # a catalog table, written twice (the second replaces the first through the staging swap)
    emb = spark.read.parquet(out + "/emb")
    write_table(emb.limit(3), "connect_emb", partition_by=["column"])
    write_table(emb, "connect_emb", partition_by=["column"])
    res["table"] = {"rows": spark.read.table("connect_emb").count(),
                    "tables": sorted(t.name for t in spark.catalog.listTables())}

    # the library on Cleora text lines
    rows = json.loads(sys.stdin.read())
    lines = spark.createDataFrame([(r,) for r in rows], "value string")
    lib = embed(lines, columns="complex::reflexive::node", dim=8, iterations=3, init="fx", markov="symmetric")
    res["library"] = {r["entity"]: list(r["embedding"]) for r in lib.collect()}
    print(json.dumps(res), flush=True)
    spark.stop()
    """
)

TEXT_ROWS = [" ".join(h) for h in random_hyperedges(80, 40, seed=31)]


@pytest.fixture(scope="module")
def connect(tmp_path_factory, sample_run):
    out = str(tmp_path_factory.mktemp("connect"))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    env.pop("SPARK_REMOTE", None)
    # stderr to a file: the local Connect server JVM inherits it and may outlive the client briefly
    err_path = os.path.join(out, "stderr.log")
    with open(err_path, "w") as err:
        res = subprocess.run([sys.executable, "-c", SCRIPT, out, sample_path(), json.dumps(sample_run.ARGS)],
                             input=json.dumps(TEXT_ROWS), stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                             timeout=600, cwd=out)
    assert res.returncode == 0, open(err_path).read()[-3000:]
    return out, json.loads(res.stdout.strip().splitlines()[-1])


def test_embed_on_spark_connect_matches_pycleora(connect):
    ours = connect[1]["library"]
    ref = reference(TEXT_ROWS, "complex::reflexive::node", dim=8, iterations=3, markov="symmetric", init="fx")
    assert set(ours) == set(ref)
    assert max(float(np.abs(np.asarray(ours[k]) - ref[k][0]).max()) for k in ref) <= 1e-5


@pytest.mark.parametrize("case", ["embed", "similar", "inspect", "table"])
def test_cli_on_connect_equals_classic(case, connect, sample_run, spark):
    out, res = connect
    assert res["remote"] is True, "the CLI's --remote must give a Spark Connect session"
    if case == "embed":
        assert res["embed_rc"] == 0
        diff = sample_run.max_abs_diff(os.path.join(out, "emb"))
        print(f"Connect vs classic max abs difference: {diff:.3g}")
        assert diff <= 1e-6
    elif case == "similar":
        from spark_cleora.similar import similar

        rc, hits = res["similar"]
        classic = similar(spark.read.parquet(sample_run.output), ["coffee:espresso-beans"], k=5).orderBy("rank")
        assert rc == 0 and [h["entity"] for h in hits] == [r["entity"] for r in classic.collect()]
    elif case == "inspect":
        from spark_cleora.explore import summarize

        report = json.load(open(os.path.join(out, "inspect.json")))
        assert res["inspect_rc"] == 0 and report["plot"]["points"] == 48
        classic = summarize(spark.read.parquet(sample_run.output))
        assert {k: report[k] for k in ("rows", "dim", "per_column", "not_unit_length")} == {
            k: classic[k] for k in ("rows", "dim", "per_column", "not_unit_length")}
    else:
        assert res["table"] == {"rows": 48, "tables": ["connect_emb"]}
