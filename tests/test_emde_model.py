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
    _train(spark, root, "m2")  # the same seed: identical weights (below)
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


def _numpy_top(model, inputs_tbl, codes, k, exclude=None, allowed=None, weight=None):
    """Top-k by the sum of bucket log-probabilities, or (``weight``) the popularity-corrected score
    ``log p(i) + weight / D * sum_j (log q_j - log P_j)`` with p = event counts of EVENTS."""
    logp = model.log_probs(inputs_tbl).astype(np.float64)
    counts = {}
    for _, it, _, _ in EVENTS:
        counts[it] = counts.get(it, 0) + 1
    items = sorted(codes)
    cm = np.array([codes[i] for i in items])
    if weight is not None:  # one pseudo-event per coded item
        p = np.array([counts.get(i, 0) + 1.0 for i in items]) / (len(EVENTS) + len(items))
        mass = np.zeros(logp.shape[1])
        np.add.at(mass, cm.ravel(), np.repeat(p, cm.shape[1]))
        logp = logp - np.log(np.where(mass > 0, mass, 1.0))
    out = {}
    for r, cust in enumerate(inputs_tbl.column("customer").to_pylist()):
        s = logp[r][cm].sum(1)
        s = (s if weight is None else s * weight / cm.shape[1] + np.log(p)).astype(np.float32)
        order = sorted(range(len(items)), key=lambda j: (-s[j], items[j]))
        keep = [items[j] for j in order if (exclude is None or items[j] not in exclude.get(cust, ()))
                and (allowed is None or items[j] in allowed)]
        out[cust] = keep[:k]
    return out


def _trained(spark, setup):
    """The events, the model ``m1`` (trained here when no earlier test did) and the coder's codes."""
    root, events = setup
    if not (root / "m1").exists():
        _train(spark, root, "m1")
    return events, load_model(str(root / "m1")), spark.read.parquet(str(root / "coder" / "codes"))


def test_spark_inference_equals_in_process_and_honours_exclusions(spark, setup):
    events, model, codes_df = _trained(spark, setup)
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
    # log-prob; the default popularity scoring (weight 2) with exclusions; another weight
    for excl, cand, opts in ((None, None, {"scoring": "log-prob"}), (seen, cands, {}),
                             (None, None, {"sketch_weight": 0.5})):
        recs, _ = recommend_with_model(
            model, events, codes_df, customer="user", item="item", timestamp="ts", k=5, candidates=cand,
            seen=events.select(events.user.alias("customer"), "item") if excl else None, batch_size=7, **opts)
        got = {r["customer"]: r["items"] for r in recs.collect()}
        weight = None if opts.get("scoring") == "log-prob" else opts.get("sketch_weight", 2.0)
        want = _numpy_top(model, tbl, codes, 5, exclude=excl, allowed=allowed if cand is not None else None,
                          weight=weight)
        assert got == want
        if excl:
            assert all(not (set(v) & seen[c]) and set(v) <= allowed for c, v in got.items())


def test_events_after_as_of_change_nothing_popularity_included(spark, setup):
    """--as-of: later events are ignored for the inputs and for the popularity prior."""
    events, model, codes_df = _trained(spark, setup)
    as_of = 1_700_000_000.0 + 20 * 7 + 2 * 60.0
    # after as_of: one item becomes by far the most popular (it would lead every list if it were counted)
    later = spark.createDataFrame([(f"u{c}", "3", as_of + 1000.0 + c, "app") for c in range(40) for _ in range(5)],
                                  events.schema)
    kept = events.filter(events.ts <= as_of)

    def top(ev):
        recs, _ = recommend_with_model(model, ev, codes_df, customer="user", item="item", timestamp="ts", k=5,
                                       as_of=as_of, batch_size=7)
        return {r["customer"]: (r["items"], [round(x, 5) for x in r["scores"]]) for r in recs.collect()}

    assert top(kept.unionByName(later)) == top(kept)


def test_items_missing_from_a_source_are_coded_randomly_and_recommended(spark, setup, tmp_path):
    root, events = setup
    from spark_cleora.emde.coder import RANDOM_SOURCE, missing_per_source

    a = spark.createDataFrame([(str(k), EMB[k].tolist()) for k in range(N_ITEMS)], "entity string, embedding array<float>")
    # source b knows a new item ("new", no interaction embedding) and lacks item 0
    b_rows = [(str(k), EMB[k, :4].tolist()) for k in range(1, N_ITEMS)] + [("new", [0.1, 0.2, 0.3, 0.4])]
    b = spark.createDataFrame(b_rows, "entity string, embedding array<float>")
    coder = fit_coder([a, b], depth=4, bits=3, seed=0, source_depths=(4, 2), random_source=True)
    assert coder.depths == [4, 2, 4] and coder.n_codes == 10 and coder.sources[2].name == RANDOM_SOURCE
    assert missing_per_source([a, b]) == {"items_in_any_source": N_ITEMS + 1, "items_random_per_source": [1, 1]}
    codes_df = item_codes(coder, [a, b])
    save_coder(spark, coder, codes_df, str(tmp_path / "coder"))
    codes = {r["item"]: r["codes"] for r in spark.read.parquet(str(tmp_path / "coder" / "codes")).collect()}
    assert set(codes) == {str(k) for k in range(N_ITEMS)} | {"new"}
    assert all(len(c) == 10 and [x // 8 for x in c] == list(range(10)) for c in codes.values())
    m = train_model(spark, coder=str(tmp_path / "coder"), events=(str(root / "events"),),
                    output=str(tmp_path / "model"), **{**OPTS, "epochs": 1})
    assert m["architecture"]["n_blocks"] == 10
    cands = spark.createDataFrame([("new",), ("1",)], "item string")
    recs, _ = recommend_with_model(load_model(str(tmp_path / "model")), events,
                                   spark.read.parquet(str(tmp_path / "coder" / "codes")), customer="user",
                                   item="item", timestamp="ts", k=2, candidates=cands)
    got = recs.collect()
    assert len(got) == 40 and all(sorted(r["items"]) == ["1", "new"] for r in got)


def test_model_commands_without_torch_name_the_install_command(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; from spark_cleora.cli import main; "
            "sys.exit(main(['emde', 'train', '--coder', 'c', '--events', 'e', '--customer', 'u', '--item', 'i', "
            "'--timestamp', 't', '--output', 'm']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: the EMDE model needs PyTorch: pip install 'spark-cleora[model]'")


def test_cli_trains_with_torch_distributor_equal_to_in_process_and_recommends(spark, setup, tmp_path):
    from spark_cleora.cli import main

    root, events = setup
    if not (root / "m1").exists():
        _train(spark, root, "m1")
    common = ["--events", str(root / "events"), "--customer", "user", "--item", "item", "--timestamp", "ts",
              "--log-level", "WARNING"]
    rc = main(["emde", "train", "--coder", str(root / "coder"), *common, "--half-life", "600", "--hidden", "32",
               "--layers", "2", "--epochs", "3", "--batch-size", "32", "--lr", "0.01", "--validation-fraction",
               "0.2", "--threads", "1", "--seed", "5", "--recall-k", "5", "--event-features", "device",
               "--distributor", "torch", "--processes", "1", "--output", str(tmp_path / "model")])
    assert rc == 0
    ref, got = _weights(root / "m1"), _weights(tmp_path / "model")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    rc = main(["emde", "recommend", "--model", str(tmp_path / "model"), *common, "--k", "3", "--exclude-seen",
               "--output", str(tmp_path / "recs")])
    assert rc == 0
    recs = spark.read.parquet(str(tmp_path / "recs")).collect()
    seen = {}
    for c, it, _, _ in EVENTS:
        seen.setdefault(c, set()).add(it)
    assert len(recs) == 40 and all(len(r["items"]) == 3 and not set(r["items"]) & seen[r["customer"]] for r in recs)
    # a model is refused with another coder
    emb = spark.createDataFrame([(str(k), (-EMB[k]).tolist()) for k in range(N_ITEMS)], "entity string, embedding array<float>")
    other = fit_coder([emb], depth=4, bits=3, seed=1)
    save_coder(spark, other, item_codes(other, [emb]), str(tmp_path / "other"))
    rc = main(["emde", "recommend", "--model", str(tmp_path / "model"), "--coder", str(tmp_path / "other"), *common,
               "--output", str(tmp_path / "recs2")])
    assert rc == 2 and not os.path.exists(tmp_path / "recs2")


def test_a_training_with_no_examples_leaves_no_work_dir(spark, setup, tmp_path, capsys):
    """An expected failure (exit 3: every customer has one event, so no example) deletes the run's work dir."""
    from spark_cleora.cli import main

    root, _ = setup
    one = tmp_path / "one.csv"
    one.write_text("user,item,ts\n" + "".join(f"u{c},{c % N_ITEMS},{1_700_000_000 + c}\n" for c in range(5)))
    out = tmp_path / "model"
    rc = main(["emde", "train", "--coder", str(root / "coder"), "--events", str(one), "--events-format", "csv",
               "--customer", "user", "--item", "item", "--timestamp", "ts", "--distributor", "none",
               "--log-level", "WARNING", "--output", str(out)])
    assert rc == 3 and "error: no training example" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["one.csv"]  # no model, no model.work, no lock
