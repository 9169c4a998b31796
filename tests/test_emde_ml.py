"""EMDE as Spark ML stages: EmdeCoder/EmdeCoderModel after Cleora in a Pipeline, save/load (a coder
directory the CLI reads), the output rules of a save, and the trained-model pair (PyTorch)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel

from spark_cleora.emde.coder import fit_coder, item_codes, load_coder
from spark_cleora.emde.ml import EmdeCoder, EmdeCoderModel, EmdeTrainer, EmdeTrainedModel
from spark_cleora.ml import Cleora
from spark_cleora.storage.outputs import RefusedError

EVENTS = [("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c"), ("u3", "a"), ("u3", "c"), ("u3", "d"), ("u4", "d"),
          ("u4", "e"), ("u5", "e"), ("u5", "f"), ("u6", "f"), ("u6", "a")]
CODER = dict(depth=3, bits=2, seed=7)


@pytest.fixture(scope="module")
def events(spark):
    return spark.createDataFrame(EVENTS, "user string, item string")


@pytest.fixture(scope="module")
def fitted(events):
    stages = [Cleora(hyperedgeCol="user", entityCol="item", dim=8, iterations=2, init="fx"),
              EmdeCoder(entityCol="item", **CODER)]
    return Pipeline(stages=stages).fit(events)


def _codes(df, key="item", col="codes"):
    return {r[key]: list(r[col]) for r in df.collect()}


def test_pipeline_codes_equal_fit_coder_on_the_embeddings(spark, events, fitted):
    cleora, coder = fitted.stages
    assert isinstance(coder, EmdeCoderModel) and coder.getOrDefault("depth") == 3
    # the same coder as the library function on the embeddings table (one vector per item)
    emb = cleora.embeddings.select("entity", "embedding")
    ref = fit_coder([emb], names=["embedding"], depth=3, bits=2, seed=7)
    (got_p,), (ref_p,) = coder.coder.sources, ref.sources  # moments are summed per partition: equal to rounding
    assert np.array_equal(got_p.directions, ref_p.directions) and got_p.fitted_on == ref_p.fitted_on == 6
    for a, b in ((got_p.mean, ref_p.mean), (got_p.scale, ref_p.scale), (got_p.biases, ref_p.biases)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    want = _codes(item_codes(ref, [emb]), "item")
    assert _codes(coder.codes) == want and len(want) == 6
    assert all(len(v) == 3 and all(3 * 0 <= c < 3 * 4 for c in v) for v in want.values())
    out = fitted.transform(spark.createDataFrame([("a",), ("zz",)], "item string"))
    got = {r["item"]: r for r in out.collect()}
    assert list(got["a"]["codes"]) == want["a"] and got["zz"]["codes"] is None and got["zz"]["embedding"] is None
    assert EmdeCoder().getOrDefault("bits") == 7 and "2**K" in EmdeCoder().getParam("bits").doc


def test_save_load_coder_model_and_pipeline_and_the_output_rules(spark, events, fitted, tmp_path):
    coder = fitted.stages[1]
    path = str(tmp_path / "coder_model")
    coder.write().save(path)
    back = EmdeCoderModel.load(path)
    assert back.uid == coder.uid and back.coder.coder_id == coder.coder.coder_id
    assert _codes(back.codes) == _codes(coder.codes)
    assert load_coder(spark, os.path.join(path, "coder")).coder_id == coder.coder.coder_id  # emde's own layout
    with pytest.raises(RefusedError, match="already exists"):
        coder.write().save(path)
    coder.write().overwrite().save(path)  # a previous save: replaced
    assert EmdeCoderModel.load(path).coder.coder_id == coder.coder.coder_id
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RefusedError, match="not an output of spark_cleora"):
        coder.write().overwrite().save(str(mine))  # someone's directory, even with overwrite()
    assert os.listdir(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["coder_model", "mine"]  # no staging or lock left

    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    q = events.select("item").distinct()
    assert _codes(loaded.transform(q)) == _codes(fitted.transform(q))
    est = EmdeCoder(entityCol="item", **CODER)
    est.write().save(str(tmp_path / "est"))
    assert EmdeCoder.load(str(tmp_path / "est")).getOrDefault("depth") == 3


def test_trainer_and_trained_model(spark, fitted, tmp_path):
    pytest.importorskip("torch")
    items = sorted(_codes(fitted.stages[1].codes))
    rows = [(f"c{c}", items[(s + c) % len(items)], 1_700_000_000.0 + 60.0 * s) for c in range(12) for s in range(5)]
    ev = spark.createDataFrame(rows, "user string, item string, ts double")
    fitted.stages[1].write().save(str(tmp_path / "coder_model"))
    trainer = EmdeTrainer(coderPath=str(tmp_path / "coder_model" / "coder"), modelPath=str(tmp_path / "model"),
                          customerCol="user", itemCol="item", timestampCol="ts", hidden=16, layers=1, epochs=1,
                          batchSize=8, distributor="none", threads=1, validationFraction=0.2, seed=3)
    model = trainer.fit(ev)
    assert isinstance(model, EmdeTrainedModel) and model.model.coder_id == fitted.stages[1].coder.coder_id
    recs = {r["customer"]: list(r["items"]) for r in model.setParams(k=3).transform(ev).collect()}
    assert set(recs) == {f"c{c}" for c in range(12)} and all(len(v) == 3 for v in recs.values())
    assert all(set(v) <= set(items) for v in recs.values())
    # the stage's defaults are those of recommend_with_model (and `emde recommend --model`)
    from spark_cleora.emde.coder import read_codes
    from spark_cleora.emde.model_recommend import recommend_with_model

    direct, _ = recommend_with_model(model.model, ev, read_codes(spark, model.model.manifest["coder"]), customer="user",
                                     item="item", timestamp="ts", k=3)
    assert {r["customer"]: list(r["items"]) for r in direct.collect()} == recs
    half, _ = recommend_with_model(model.model, ev, read_codes(spark, model.model.manifest["coder"]), customer="user",
                                   item="item", timestamp="ts", k=3, sketch_weight=0.5)
    got = model.copy().setParams(k=3, sketchWeight=0.5).transform(ev)
    assert sorted(map(tuple, got.collect())) == sorted(map(tuple, half.collect()))
    model.write().save(str(tmp_path / "saved"))
    back = EmdeTrainedModel.load(str(tmp_path / "saved"))
    assert {r["customer"]: list(r["items"]) for r in back.transform(ev).collect()} == \
        {r["customer"]: list(r["items"]) for r in model.transform(ev).collect()}
