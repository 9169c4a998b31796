"""The library on a Spark Connect session (Databricks serverless / shared clusters are Connect).

Runs in a subprocess: a process holds either a classic or a Connect session, and the suite's fixture
is classic. ``.remote("local[2]")`` starts a local Connect server, as GraphFrames' tests do.
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

pytest.importorskip("grpc", reason="pyspark[connect] extras are not installed")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pyspark.sql import SparkSession
    from spark_cleora import embed
    from spark_cleora.session import is_remote
    spark = SparkSession.builder.remote("local[2]").config("spark.sql.shuffle.partitions", "2").getOrCreate()
    assert is_remote(spark), type(spark)
    rows = json.loads(sys.stdin.read())
    lines = spark.createDataFrame([(r,) for r in rows], "value string")
    emb = embed(lines, columns="complex::reflexive::node", dim=8, iterations=3, init="fx", markov="symmetric")
    print(json.dumps({r["entity"]: list(r["embedding"]) for r in emb.collect()}), flush=True)
    spark.stop()
    """
)


def test_embed_on_spark_connect_matches_pycleora(tmp_path):
    rows = [" ".join(h) for h in random_hyperedges(80, 40, seed=31)]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    env.pop("SPARK_REMOTE", None)
    # stderr to a file: the local Connect server JVM inherits it and may outlive the client briefly
    err_path = tmp_path / "stderr.log"
    with open(err_path, "w") as err:
        res = subprocess.run([sys.executable, "-c", SCRIPT], input=json.dumps(rows), stdout=subprocess.PIPE,
                             stderr=err, text=True, env=env, timeout=300)
    assert res.returncode == 0, err_path.read_text()[-3000:]
    ours = json.loads(res.stdout.strip().splitlines()[-1])
    ref = reference(rows, "complex::reflexive::node", dim=8, iterations=3, markov="symmetric", init="fx")
    assert set(ours) == set(ref)
    assert max(float(np.abs(np.asarray(ours[k]) - ref[k][0]).max()) for k in ref) <= 1e-5
