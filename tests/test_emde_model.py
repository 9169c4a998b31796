"""The trained EMDE model: training (seeded, resumable), save/load, Spark inference vs in-process."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from spark_cleora.emde.coder import fit_coder, item_codes, save_coder  # noqa: E402
from spark_cleora.emde.model import load_model  # noqa: E402
from spark_cleora.emde.model_recommend import recommend_with_model  # noqa: E402
from spark_cleora.emde.train import train_model  # noqa: E402

N_ITEMS, DIM = 24, 8
RNG = np.random.default_rng(3)
EMB = RNG.standard_normal((N_ITEMS, DIM))
# customers walk the items in order (item k -> k+1), with a random start: the next item is learnable
EVENTS = []
for c in range(40):
    start = int(RNG.integers(0, N_ITEMS))
    for s in range(6):
        EVENTS.append((f"u{c}", str((start + s) % N_ITEMS), 1_700_000_000.0 + c * 7 + s * 60.0, "web" if c % 2 else "app"))
OPTS = dict(customer="user", item="item", timestamp="ts", half_life=600.0, hidden=32, layers=2, epochs=3,
            batch_size=32, lr=0.01, validation_fraction=0.2, distributor="none", threads=1, seed=5, recall_k=5,
            event_features=("device",))


@pytest.fixture(scope="module")
def setup(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("emde_model")
    emb = spark.createDataFrame([(str(k), EMB[k].tolist()) for k in range(N_ITEMS)], "entity string, embedding array<float>")
    coder = fit_coder([emb], depth=4, bits=3, seed=0)
    save_coder(spark, coder, item_codes(coder, [emb]), str(root / "coder"))
    events = spark.createDataFrame(EVENTS, "user string, item string, ts double, device string")
    events.write.parquet(str(root / "events"))
    return root, spark.read.parquet(str(root / "events"))


def _train(spark, root, name, **extra):
    opts = {**OPTS, **extra}
    return train_model(spark, coder=str(root / "coder"), events=(str(root / "events"),), output=str(root / name), **opts)


def _weights(path):
    return torch.load(os.path.join(path, "weights.pt"), weights_only=True)


def test_loss_falls_runs_are_identical_and_the_model_round_trips(spark, setup):
    root, _ = setup
    m1 = _train(spark, root, "m1")
    m2 = _train(spark, root, "m2")
    losses = [e["train_loss"] for e in m1["metrics"]]
    assert losses[-1] < losses[0]
    assert m1["metrics"][0]["val_loss"] is not None and "val_recall@5" in m1["metrics"][0]
    w1, w2 = _weights(root / "m1"), _weights(root / "m2")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    model = load_model(str(root / "m1"))
    assert model.coder_id == m1["coder_id"] and model.manifest["features"]["categorical"][0][0] == "device"
    assert all(torch.equal(model.net.state_dict()[k], w1[k]) for k in w1)
    assert {"torch", "spark_cleora", "pyspark"} <= set(model.manifest["versions"])
    assert not os.path.exists(str(root / "m1") + ".work")  # work directory removed after success


def test_a_killed_training_resumes_from_its_last_epoch(spark, setup, capfd):
    root, _ = setup
    with pytest.raises(KeyboardInterrupt):
        _train(spark, root, "killed", _stop_after_epoch=1)
    assert not os.path.exists(root / "killed")
    m = _train(spark, root, "killed")
    assert "resuming after epoch 1" in capfd.readouterr().err
    assert [e["epoch"] for e in m["metrics"]] == [1, 2, 3]
    if not (root / "m1").exists():
        _train(spark, root, "m1")
    ref = _weights(root / "m1")
    got = _weights(root / "killed")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def _numpy_top(model, inputs_tbl, codes, k, exclude=None, allowed=None):
    logp = model.log_probs(inputs_tbl).astype(np.float64)
    items = sorted(codes)
    cm = np.array([codes[i] for i in items])
    out = {}
    for r, cust in enumerate(inputs_tbl.column("customer").to_pylist()):
        s = logp[r][cm].sum(1).astype(np.float32)
        order = sorted(range(len(items)), key=lambda j: (-s[j], items[j]))
        keep = [items[j] for j in order if (exclude is None or items[j] not in exclude.get(cust, ()))
                and (allowed is None or items[j] in allowed)]
        out[cust] = keep[:k]
    return out


def test_spark_inference_equals_in_process_and_honours_exclusions(spark, setup):
    root, events = setup
    if not (root / "m1").exists():
        _train(spark, root, "m1")
    model = load_model(str(root / "m1"))
    codes_df = spark.read.parquet(str(root / "coder" / "codes"))
    codes = {r["item"]: r["codes"] for r in codes_df.collect()}
    from spark_cleora.emde.examples import build_examples

    inputs, _ = build_examples(events, codes_df, model.inputs, customer="user", item="item", timestamp="ts",
                               event_features=("device",), predict=True)
    tbl = pa.Table.from_pandas(inputs.toPandas(), preserve_index=False)
    seen = {}
    for c, it, _, _ in EVENTS:
        seen.setdefault(c, set()).add(it)
    allowed = {str(k) for k in range(0, N_ITEMS, 2)}
    cands = spark.createDataFrame([(i,) for i in sorted(allowed)], "item string")
    for excl, cand in ((None, None), (seen, cands)):
        recs, _ = recommend_with_model(
            model, events, codes_df, customer="user", item="item", timestamp="ts", k=5, candidates=cand,
            seen=events.select(events.user.alias("customer"), "item") if excl else None, batch_size=7)
        got = {r["customer"]: r["items"] for r in recs.collect()}
        want = _numpy_top(model, tbl, codes, 5, exclude=excl, allowed=allowed if cand is not None else None)
        assert got == want
        if excl:
            assert all(not (set(v) & seen[c]) and set(v) <= allowed for c, v in got.items())
