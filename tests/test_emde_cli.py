"""``spark-cleora emde ...`` end to end on tiny files: fit, sketch (+ refresh), recommend, look-alikes."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from spark_cleora.cli import main
from spark_cleora.emde.config import (
    FitConfig,
    RecommendConfig,
    SimilarCustomersConfig,
    SketchConfig,
    load_emde_toml,
)
from spark_cleora.emde.store import read_meta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "conf", "emde.example.toml")
STEPS = {"fit": FitConfig, "sketch": SketchConfig, "recommend": RecommendConfig,
         "similar-customers": SimilarCustomersConfig}
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def files(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emde_cli")
    rng = np.random.default_rng(0)
    items = [f"it{k}" for k in range(20)]
    emb = [(it, rng.normal(size=8).tolist()) for it in items]
    spark.createDataFrame(emb, "entity string, embedding array<float>").write.parquet(str(tmp / "emb"))
    lines = ["user,item,ts,w"]
    for k in range(80):
        lines.append(f"u{k % 7},{items[rng.integers(20)]},{T0 + 60 * k},{1 + k % 3}")
    lines += ["u1,,100,1", "u2,nope,100,1"]  # a null item and an item without codes
    (tmp / "events.csv").write_text("\n".join(lines) + "\n")
    return tmp


def run(*args):
    return main(["emde", *args, "--log-level", "WARNING"])


def test_fit_sketch_refresh_recommend_similar(spark, files, capsys, caplog):
    tmp = str(files)
    coder, sk1, sk2, recs = (os.path.join(tmp, d) for d in ("coder", "sk1", "sk2", "recs"))
    assert run("fit", "--embeddings", f"{tmp}/emb", "--output", coder, "--depth", "3", "--bits", "3",
               "--seed", "1") == 0
    manifest = json.load(open(os.path.join(coder, "manifest.json")))
    assert manifest["items_coded"] == 20 and manifest["length"] == 24 and manifest["sources"][0]["fitted_on"] == 20
    # a local manifest is read without Spark (so without Spark's warning about the "_emde" directory)
    assert read_meta(None, coder, "coder")["coder_id"] == manifest["coder_id"]
    assert run("fit", "--embeddings", f"{tmp}/emb", "--output", coder) == 2, "never replace a coder silently"
    assert "already exists" in capsys.readouterr().err

    conf = files / "emde.toml"
    conf.write_text(
        "[emde.sketch]\n"
        f'coder = "{coder}"\nevents = ["{tmp}/events.csv"]\nevents_format = "csv"\n'
        'customer = "user"\nitem = "item"\ntimestamp = "ts"\nweight = "w"\nhalf_life = 1800.0\n'
        f"as_of = {T0 + 60 * 40}\n"
        "[emde.recommend]\nscoring = \"geometric\"\nk = 4\n")
    caplog.set_level(logging.INFO, logger="spark_cleora.emde")
    assert run("sketch", "--config", str(conf), "--output", sk1) == 0
    progress = [r.getMessage() for r in caplog.records if r.name == "spark_cleora.emde.sketch"]
    steps = [m.split(": done in ")[0] for m in progress if m.endswith(" ...") or ": done in " in m]
    assert steps == ["emde sketch: validate events ...", "emde sketch: validate events",
                     "emde sketch: write sketches ...", "emde sketch: write sketches"]
    first = json.load(open(os.path.join(sk1, "_manifest.json")))
    assert first["rejected"] == {"null_item": 1, "unknown_item": 1, "after_as_of": 39}
    assert first["accepted"] == 41 and first["cutoff"] == T0 + 2400
    # refresh: the flags override the file (no --as-of: up to the newest event)
    assert run("sketch", "--config", str(conf), "--as-of", str(T0 + 60 * 79), "--previous", sk1,
               "--output", sk2, "--json") == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["rejected"] == {"null_item": 1, "before_previous": 42} and second["accepted"] == 39
    assert second["sketched_events"] == 80 and second["customers"] == 7
    assert sorted(r["customer"] for r in spark.read.parquet(sk2).collect()) == [f"u{k}" for k in range(7)]

    assert run("recommend", "--config", str(conf), "--coder", coder, "--sketches", sk2, "--output", recs,
               "--exclude-seen", "--events", f"{tmp}/events.csv", "--events-format", "csv",
               "--customer", "user", "--item", "item") == 0
    events = spark.read.option("header", True).csv(f"{tmp}/events.csv").collect()
    out = spark.read.parquet(recs).collect()
    assert len(out) == 7
    for r in out:
        seen = {e["item"] for e in events if e["user"] == r["customer"]}
        assert 0 < len(r["items"]) <= 4 and not seen & set(r["items"])
        assert r["scores"] == sorted(r["scores"], reverse=True)
    assert json.load(open(os.path.join(recs, "_manifest.json")))["config"]["scoring"] == "geometric"

    look = os.path.join(tmp, "look")
    assert run("similar-customers", "--sketches", sk2, "--coder", coder, "--customer", "u3", "--customer", "zz",
               "--k", "2", "--output", look) == 0
    rows = spark.read.parquet(look).collect()
    assert [r["customer"] for r in rows] == ["u3"] and len(rows[0]["customers"]) == 2 and "u3" not in rows[0]["customers"]
    assert json.load(open(os.path.join(look, "_manifest.json")))["customers_not_found"] == 1

    # a sketch table from another coder is refused
    other = os.path.join(tmp, "coder2")
    assert run("fit", "--embeddings", f"{tmp}/emb", "--output", other, "--depth", "3", "--bits", "3",
               "--seed", "2") == 0
    assert run("recommend", "--coder", other, "--sketches", sk2, "--output", os.path.join(tmp, "r2")) == 2
    assert "refusing to mix" in capsys.readouterr().err


def test_bad_weights_exit_3_and_config_errors_exit_2(files, capsys):
    tmp = str(files)
    (files / "neg.csv").write_text("user,item,ts,w\nu1,it1,1,-2\nu1,it2,2,1\n")
    coder = os.path.join(tmp, "coder")
    if not os.path.exists(coder):
        assert run("fit", "--embeddings", f"{tmp}/emb", "--output", coder, "--depth", "2", "--bits", "2") == 0
    assert run("sketch", "--coder", coder, "--events", f"{tmp}/neg.csv", "--events-format", "csv", "--customer",
               "user", "--item", "item", "--weight", "w", "--output", os.path.join(tmp, "neg")) == 3
    assert "1 events have a null, NaN, infinite or negative weight" in capsys.readouterr().err
    assert run("sketch", "--coder", coder, "--events", f"{tmp}/neg.csv", "--customer", "user", "--item", "item",
               "--half-life", "60", "--output", os.path.join(tmp, "x")) == 2
    assert "--half-life needs --timestamp" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tmp, "neg")) and not os.path.exists(os.path.join(tmp, "x"))


def test_example_config_lists_every_option_and_is_valid():
    text = open(EXAMPLE).read()
    for step, cls in STEPS.items():
        body = text.split(f"[emde.{step}]")[1].split("\n[")[0]
        listed = set(re.findall(r"^#?\s*([a-z_]+)\s*=", body, flags=re.M))
        assert listed == cls.field_names(), f"[emde.{step}]: {sorted(cls.field_names() ^ listed)}"
        cls(**load_emde_toml(EXAMPLE, step, cls))


def test_spark_submit_entry_point_takes_the_cli_arguments():
    res = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "emde.py"), "sketch", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--half-life" in res.stdout and "--previous" in res.stdout
