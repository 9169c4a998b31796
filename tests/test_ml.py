"""The Spark ML face: Cleora/CleoraModel as Pipeline stages, their Params, and save/load through Spark
reads and writes (the format a Connect session reads too)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel

from spark_cleora import embed
from spark_cleora.ml import Cleora, CleoraModel

EVENTS = [("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c"), ("u3", "a"), ("u3", "c"), ("u3", "d"), ("u4", "d"),
          ("u4", "e")]
OPTS = dict(dim=8, iterations=2, init="fx", markov="symmetric")


@pytest.fixture(scope="module")
def events(spark):
    return spark.createDataFrame(EVENTS, "user string, item string")


@pytest.fixture(scope="module")
def fitted(events):
    return Pipeline(stages=[Cleora(hyperedgeCol="user", entityCol="item", **OPTS)]).fit(events)


def vectors(df, key="item", col="embedding"):
    return {r[key]: np.asarray(r[col], dtype=np.float64) for r in df.collect()}


def test_params_defaults_and_pycleora_names():
    est = Cleora(hyperedgeCol="user", entityCol="item")
    # EmbedConfig's defaults; pycleora's feature_dim / num_iterations are dim / iterations
    assert (est.getOrDefault("dim"), est.getOrDefault("iterations"), est.getOrDefault("markov"),
            est.getOrDefault("init"), est.getOrDefault("seed")) == (256, 4, "left", "siphash", 0)
    assert "feature_dim" in est.getParam("dim").doc and "num_iterations" in est.getParam("iterations").doc
    assert est.embed_options() == {"hyperedge": "user", "entity": "item", "dim": 256, "iterations": 4,
                                   "markov": "left", "init": "siphash", "seed": 0, "whiten": "none",
                                   "residual": 0.0, "engine": "auto"}
    with pytest.raises(TypeError):
        Cleora(dim="many")


def test_pipeline_fit_equals_embed_and_transform_attaches_vectors(spark, events, fitted):
    model = fitted.stages[0]
    assert isinstance(model, CleoraModel) and model.getOrDefault("dim") == 8
    ref = vectors(embed(events, hyperedge="user", entity="item", **OPTS).withColumnRenamed("entity", "item"))
    assert set(vectors(model.embeddings.withColumnRenamed("entity", "item"))) == set("abcde")
    queries = spark.createDataFrame([("a", 1), ("e", 2), ("zz", 3)], "item string, n int")
    out = {r["item"]: r for r in fitted.transform(queries).collect()}
    assert out["zz"]["embedding"] is None and out["a"]["n"] == 1  # unseen entity: NULL; columns kept
    for k in ("a", "e"):
        assert np.array_equal(np.asarray(out[k]["embedding"], dtype=np.float64), ref[k])
    with pytest.raises(ValueError, match="already has a column"):
        model.transform(queries.withColumn("embedding", queries.n))


def test_save_load_model_estimator_and_pipeline_model(spark, events, fitted, tmp_path):
    model = fitted.stages[0]
    model.write().save(str(tmp_path / "model"))
    with pytest.raises(Exception):  # an existing save is not replaced without overwrite()
        model.write().save(str(tmp_path / "model"))
    meta = json.loads(spark.read.text(str(tmp_path / "model" / "metadata")).first()[0])
    assert meta["class"] == "spark_cleora.ml.CleoraModel" and meta["paramMap"]["dim"] == 8
    back = CleoraModel.load(str(tmp_path / "model"))
    assert back.uid == model.uid and back.getOrDefault("inputCol") == "item"
    assert {k: v.tolist() for k, v in vectors(back.embeddings, "entity").items()} == \
        {k: v.tolist() for k, v in vectors(model.embeddings, "entity").items()}

    est = Cleora(hyperedgeCol="user", entityCol="item", dim=16)
    est.write().overwrite().save(str(tmp_path / "est"))
    est2 = Cleora.load(str(tmp_path / "est"))
    assert est2.uid == est.uid and est2.getOrDefault("dim") == 16 and est2.getOrDefault("iterations") == 4
    with pytest.raises(ValueError, match="not a spark_cleora.ml.Cleora"):
        Cleora.load(str(tmp_path / "model"))

    # a whole PipelineModel: pyspark.ml reads our stages' metadata back
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    got = vectors(loaded.transform(events).select("item", "embedding").dropDuplicates(["item"]))
    ref = vectors(fitted.transform(events).select("item", "embedding").dropDuplicates(["item"]))
    assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in ref.items()}


CONNECT_SCRIPT = """
import json, sys
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import SparkSession
from spark_cleora.ml import Cleora, CleoraModel
saved, out = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.remote("local[2]").config("spark.sql.shuffle.partitions", "4").getOrCreate()
res = {"remote": type(spark).__module__}
loaded = CleoraModel.load(saved)  # written by the classic session
res["loaded"] = {r["entity"]: list(r["embedding"]) for r in loaded.embeddings.collect()}
ev = spark.createDataFrame(json.loads(sys.argv[3]), "user string, item string")
pm = Pipeline(stages=[Cleora(hyperedgeCol="user", entityCol="item", **json.loads(sys.argv[4]))]).fit(ev)
pm.write().overwrite().save(out)
back = PipelineModel.load(out)
res["fitted"] = {r["item"]: list(r["embedding"]) for r in back.transform(ev).dropDuplicates(["item"]).collect()}
print(json.dumps(res), flush=True)
spark.stop()
"""


def test_saved_model_loads_and_pipeline_fits_on_connect(fitted, tmp_path):
    """On a Spark Connect session: a model saved by a classic session loads; a Pipeline fits, saves and
    loads back with the same vectors."""
    import os
    import subprocess
    import sys

    pytest.importorskip("grpc", reason="pyspark[connect] extras are not installed")
    model = fitted.stages[0]
    model.write().save(str(tmp_path / "classic"))
    # SPARK_TESTING: pyspark gives the local Connect server an ephemeral port (not a busy 15002)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_TESTING="1")
    env.pop("SPARK_REMOTE", None)
    with open(tmp_path / "stderr.log", "w") as err:
        res = subprocess.run([sys.executable, "-c", CONNECT_SCRIPT, str(tmp_path / "classic"), str(tmp_path / "pm"),
                              json.dumps(EVENTS), json.dumps(OPTS)], stdout=subprocess.PIPE, stderr=err, text=True,
                             env=env, timeout=900, cwd=str(tmp_path))
    assert res.returncode == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert "connect" in got["remote"]
    ref = {k: v.tolist() for k, v in vectors(model.embeddings, "entity").items()}
    assert {k: np.float32(v).tolist() for k, v in got["loaded"].items()} == ref
    assert {k: np.float32(v).tolist() for k, v in got["fitted"].items()} == ref
