"""Input and config rules: typed TOML, the resume fingerprint, bad-row rules for weights, timestamps and
UTF-8, RFC 4180 CSV, cleora-text names, and refused option combinations."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from spark_cleora.cli import main
from spark_cleora.config import EmbedConfig, load_toml
from spark_cleora.errors import BadInputError
from spark_cleora.config import FINGERPRINTED, NOT_FINGERPRINTED
from spark_cleora.engine.embed import fingerprint, run_embedding
from spark_cleora.emde.coder import fit_coder
from spark_cleora.emde.config import FitConfig, load_emde_toml
from spark_cleora.emde.sketch import build_sketches
from spark_cleora.errors import ConfigError

# --------------------------------------------------------------------------------------------
# TOML: values have their option's type
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, key, expected", [
    ('dedupe = "false"', "dedupe", "a boolean"),
    ("iterations = true", "iterations", "an integer"),
    ("dim = 8.0", "dim", "an integer"),
    ('residual = "0.5"', "residual", "a number"),
    ("hyperedge = 3", "hyperedge", "a string"),
    ("multiscale = [1, true]", "multiscale", "a list of integers"),
    ('inputs = [1]', "inputs", "a list of strings"),
])
def test_embed_toml_values_must_have_the_option_type(tmp_path, body, key, expected):
    conf = tmp_path / "c.toml"
    conf.write_text(f"[embed]\n{body}\n")
    with pytest.raises(ConfigError) as err:
        load_toml(conf)
    msg = str(err.value)
    assert str(conf) in msg and f"[embed] {key}" in msg and f"must be {expected}" in msg


def test_emde_toml_values_must_have_the_option_type(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[emde.fit]\noverwrite = "false"\n')
    with pytest.raises(ConfigError, match=r"\[emde\.fit\] overwrite must be a boolean .*got str 'false'"):
        load_emde_toml(conf, "fit", FitConfig)
    conf.write_text("[emde.fit]\noverwrite = false\nseed = 3\nembeddings = \"e\"\n")
    assert load_emde_toml(conf, "fit", FitConfig) == {"overwrite": False, "seed": 3, "embeddings": ("e",)}


def test_toml_typed_values_load_and_ints_widen_to_float(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[embed]\ninputs = "a.csv"\nsession-gap = 60\ndedupe = true\nmultiscale = [1, 2]\n')
    assert load_toml(conf) == {"inputs": ("a.csv",), "session_gap": 60.0, "dedupe": True, "multiscale": (1, 2)}
    assert isinstance(load_toml(conf)["session_gap"], float)


def test_toml_syntax_error_and_bad_type_exit_2_naming_the_file(tmp_path, capsys):
    conf = tmp_path / "c.toml"
    conf.write_text("[embed]\ndim = \n")
    assert main(["embed", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert f"{conf}: not valid TOML" in err and "line 2" in err and "Traceback" not in err
    conf.write_text('[emde.fit]\noverwrite = "false"\n')
    assert main(["emde", "fit", "--config", str(conf), "--embeddings", "e", "--output", "o"]) == 2
    assert "overwrite must be a boolean" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Resume fingerprint
# --------------------------------------------------------------------------------------------

BASE = dict(inputs=("a.csv",), input_format="csv", hyperedge="u", entity="i", timestamp="t", session_gap=10.0,
            output="o")
#: per fingerprinted field: (base options, changed options)
CHANGES = {
    "inputs": ({}, {"inputs": ("b.csv",)}),
    "input_format": ({}, {"input_format": "tsv"}),
    "hyperedge": ({}, {"hyperedge": "u2"}),
    "entity": ({}, {"entity": "i2"}),
    "timestamp": ({}, {"timestamp": "t2"}),
    "session_gap": ({}, {"session_gap": 20.0}),
    "dedupe": ({}, {"dedupe": True}),
    "weight": ({}, {"weight": "w"}),
    "columns": ({"input_format": "cleora-tsv", "hyperedge": None, "entity": None, "timestamp": None,
                 "session_gap": None, "columns": "complex::reflexive::a"}, {"columns": "complex::reflexive::b"}),
    "csv_delimiter": ({}, {"csv_delimiter": ";"}),
    "max_line_length": ({}, {"max_line_length": 5}),
    "on_bad_rows": ({}, {"on_bad_rows": "quarantine", "rejects": "r1"}),
    "rejects": ({"on_bad_rows": "quarantine", "rejects": "r1"}, {"rejects": "r2"}),
    "dim": ({}, {"dim": 8}),
    "iterations": ({"whiten": "final"}, {"iterations": 5}),
    "markov": ({}, {"markov": "symmetric"}),
    "init": ({}, {"init": "fx"}),
    "seed": ({}, {"seed": 1}),
    "whiten": ({}, {"whiten": "every"}),
    "residual": ({}, {"residual": 0.5}),
    "multiscale": ({}, {"multiscale": (2, 4)}),
    "init_vectors": ({}, {"init_vectors": "v.parquet"}),
}


def test_every_config_field_has_a_fingerprint_decision():
    """A new EmbedConfig field fails here until it is put in FINGERPRINTED or NOT_FINGERPRINTED."""
    fields = {f.name for f in dataclasses.fields(EmbedConfig)}
    assert not set(FINGERPRINTED) & set(NOT_FINGERPRINTED)
    assert set(FINGERPRINTED) | set(NOT_FINGERPRINTED) == fields
    assert set(CHANGES) == set(FINGERPRINTED)  # and each fingerprinted field has a change tested below


def test_fail_and_skip_share_a_graph_so_a_rerun_with_skip_resumes():
    base = EmbedConfig(**BASE)
    assert fingerprint(base) == fingerprint(base.replace(on_bad_rows="skip"))


@pytest.mark.parametrize("name", sorted(FINGERPRINTED))
def test_fingerprint_changes_with_every_result_changing_option(name):
    base_opts, change = CHANGES[name]
    base = EmbedConfig(**{**BASE, **base_opts})
    assert fingerprint(base) != fingerprint(base.replace(**change))


@pytest.mark.parametrize("change", [{"engine": "shuffle"}, {"num_blocks": 3}, {"keep_work": True},
                                    {"output": "p"}, {"iterations": 6}, {"block_memory_gb": 1.0}])
def test_fingerprint_ignores_options_that_keep_the_numbers(change):
    base = EmbedConfig(**BASE)
    assert fingerprint(base) == fingerprint(base.replace(**change))


def test_a_rewritten_input_with_the_same_size_and_mtime_changes_the_fingerprint(tmp_path):
    src = tmp_path / "ev"
    src.mkdir()
    f = src / "part-0.csv"
    f.write_text("u,i\nu1,a\nu1,b\n")
    cfg = EmbedConfig(**{**BASE, "inputs": (str(src),)})
    before = fingerprint(cfg)
    st = os.stat(f)
    f.write_text("u,i\nu1,a\nu1,c\n")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p / rsync -t leave it
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    assert fingerprint(cfg)["input_files"] != before["input_files"]


def test_resuming_a_weighted_run_without_weight_is_refused(spark, tmp_path, capsys):
    ev = tmp_path / "ev.csv"
    ev.write_text("u,i,w\nu1,a,1\nu1,b,5\nu2,b,1\nu2,c,2\n")
    work = str(tmp_path / "work")
    args = [str(ev), "--input-format", "csv", "--hyperedge", "u", "--entity", "i", "--dim", "4",
            "--iterations", "1", "--work-dir", work, "--keep-work"]
    assert main(["embed", *args, "--weight", "w", "--output", str(tmp_path / "o1")]) == 0
    assert main(["embed", *args, "--output", str(tmp_path / "o2")]) == 2
    assert "changed: weight" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o2")


# --------------------------------------------------------------------------------------------
# Bad rows: weights, timestamps
# --------------------------------------------------------------------------------------------

def _run(spark, rows, schema, **opts):
    cfg = EmbedConfig(input_format="dataframe", hyperedge="u", entity="i", dim=4, iterations=2,
                      on_bad_rows="skip", **opts)
    res = run_embedding(spark, cfg, spark.createDataFrame(rows, schema), store=None)
    return res, {r["entity"]: r for r in res.embeddings.collect()}


def test_huge_and_tiny_weights_are_bad_rows_and_nothing_is_nan(spark):
    rows = [("u1", "a", 1e308), ("u1", "b", 1e308), ("u1", "c", 1.0), ("u2", "a", 1e-300), ("u2", "c", 2.0),
            ("u2", "d", 1e18), ("u3", "b", 1e-18), ("u3", "d", 1.0), ("u3", "a", 1e19)]
    res, emb = _run(spark, rows, "u string, i string, w double", weight="w")
    assert res.report["rejected"] == {"bad_weight": 4} and res.report["input_rows"] == 9
    assert sorted(emb) == ["b", "c", "d"]
    for r in emb.values():
        assert math.isfinite(r["degree"]) and math.isfinite(r["occurrences"])
        assert np.all(np.isfinite(r["embedding"])) and abs(np.linalg.norm(r["embedding"]) - 1) < 1e-5
    cfg = EmbedConfig(input_format="dataframe", hyperedge="u", entity="i", weight="w", dim=4, iterations=1)
    with pytest.raises(BadInputError, match="bad_weight"):
        run_embedding(spark, cfg, spark.createDataFrame(rows, "u string, i string, w double"), store=None)


def test_nan_and_infinite_timestamps_are_bad_timestamp(spark):
    rows = [("u1", "a", "NaN"), ("u1", "b", "Infinity"), ("u1", "c", "-Infinity"), ("u1", "d", "10"),
            ("u1", "e", "20"), ("u2", "a", "15"), ("u2", "b", "oops")]
    res, emb = _run(spark, rows, "u string, i string, t string", timestamp="t", session_gap=100.0)
    assert res.report["rejected"] == {"bad_timestamp": 4} and sorted(emb) == ["a", "d", "e"]
    rows = [("u1", "a", float("nan")), ("u1", "b", float("inf")), ("u1", "c", 1.0), ("u1", "d", 2.0)]
    res, emb = _run(spark, rows, "u string, i string, t double", timestamp="t", session_gap=100.0)
    assert res.report["rejected"] == {"bad_timestamp": 2} and sorted(emb) == ["c", "d"]


def test_emde_weight_above_the_limit_is_refused(spark):
    codes = spark.createDataFrame([("i1", [0, 5]), ("i2", [1, 4])], "item string, codes array<int>")
    events = spark.createDataFrame([("a", "i1", 1e39), ("a", "i2", 1.0), ("b", "i1", 1e18)],
                                   "cust string, item string, w double")
    with pytest.raises(BadInputError, match=r"1 events have .* or one above 1e\+18"):
        build_sketches(events, codes, customer="cust", item="item", weight="w")
    ok = build_sketches(events.filter("w < 1e19"), codes, customer="cust", item="item", weight="w")
    assert all(np.all(np.isfinite(r["val"])) for r in ok.sketches.collect())


def test_emde_fit_refuses_infinite_vectors(spark):
    df = spark.createDataFrame([("a", [1.0, 2.0]), ("b", [float("inf"), 0.0]), ("c", [0.5, -float("inf")]),
                                ("d", [1.0, 1.0])], "entity string, embedding array<float>")
    with pytest.raises(BadInputError, match="2 embeddings containing null, NaN or infinite values"):
        fit_coder([df], depth=2, bits=1)


# --------------------------------------------------------------------------------------------
# CSV: RFC 4180 quoting and invalid UTF-8
# --------------------------------------------------------------------------------------------

def test_csv_is_rfc4180_and_invalid_utf8_is_counted(spark, tmp_path):
    ev = tmp_path / "ev.csv"
    ev.write_bytes(
        b"\xef\xbb\xbfu,it\xc3\xa9m\n"       # a BOM and a UTF-8 header name
        b"u1,a\xff\nu1,a\xfe\nu1,x\n"        # two different invalid names: counted, not merged
        b'u2,"q""uote"\nu2,x\n'              # a doubled quote
        b'u3,"multi\nline"\nu3,x\n'          # a quoted newline stays in the value: one row
        b"u4,real\xef\xbf\xbd\nu4,x\n"       # a genuine U+FFFD is valid UTF-8
        b'u5,"back\\"\nu5,x\n'                # a backslash is an ordinary character
    )
    out, rejects = tmp_path / "o", tmp_path / "rej"
    assert main(["embed", str(ev), "--input-format", "csv", "--hyperedge", "u", "--entity", "itém", "--dim", "4",
                 "--iterations", "1", "--on-bad-rows", "quarantine", "--rejects", str(rejects),
                 "--output", str(out)]) == 0
    report = json.loads((out / "_run.json").read_text())
    assert report["input_rows"] == 11 and report["rejected"] == {"invalid_utf8": 2}
    names = {r["entity"] for r in spark.read.parquet(str(out)).collect()}
    assert names == {"x", 'q"uote', "multi\nline", "real\ufffd", "back\\"}
    assert spark.read.parquet(str(rejects)).count() == 2


# --------------------------------------------------------------------------------------------
# cleora-text names, refused combinations
# --------------------------------------------------------------------------------------------

def test_cleora_text_refuses_names_with_whitespace(spark, tmp_path, capsys):
    ev = tmp_path / "ev.csv"
    ev.write_text('u,i\nu1,a b\nu1,c\nu2,"d\ne"\nu2,c\n')
    out = tmp_path / "o"
    assert main(["embed", str(ev), "--input-format", "csv", "--hyperedge", "u", "--entity", "i", "--dim", "4",
                 "--iterations", "1", "--output-format", "cleora-text", "--output", str(out)]) == 2
    assert "cannot hold" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args, msg", [
    (["--iterations", "0"], "iterations must be an integer >= 1"),
    (["--seed", str(2**64 + 5)], "seed must fit a signed 64-bit integer"),
    (["--seed", str(-(2**63) - 1)], "seed must fit a signed 64-bit integer"),
    (["--on-bad-rows", "skip", "--rejects", "r"], "--rejects is written only with --on-bad-rows quarantine"),
    (["--rejects", "r"], "--rejects is written only with --on-bad-rows quarantine"),
    (["--input-table", "db.t"], "--input-table reads a catalog table"),
    (["--csv-delimiter", ";"], "--csv-delimiter applies to csv/tsv input"),
])
def test_refused_options_exit_2(tmp_path, capsys, args, msg):
    base = ["embed", "ev.parquet", "--hyperedge", "u", "--entity", "i", "--output", str(tmp_path / "o")]
    assert main([*base, *args]) == 2
    assert msg in capsys.readouterr().err


def test_dedupe_with_cleora_tsv_and_emde_seed_range_are_refused(capsys):
    assert main(["embed", "x.tsv", "--input-format", "cleora-tsv", "--columns", "complex::reflexive::p",
                 "--dedupe", "--output", "o"]) == 2
    assert "--dedupe/--session-gap/--csv-delimiter apply to event tables" in capsys.readouterr().err
    assert main(["emde", "fit", "--embeddings", "e", "--output", "o", "--seed", str(2**70)]) == 2
    assert "seed must fit a signed 64-bit integer" in capsys.readouterr().err
    EmbedConfig(inputs=("a",), hyperedge="u", entity="i", seed=2**63 - 1)  # the edges are fine
    FitConfig(seed=-(2**63))


def test_a_listed_store_fingerprints_each_files_size_and_modification_time(spark, tmp_path):
    """Stores without local paths are identified by their listing (here a file:// URI, listed the same way)."""
    from spark_cleora.engine.embed import _listing_fingerprint

    src = tmp_path / "ev"
    src.mkdir()
    (src / "a.csv").write_text("u,i\nu1,a\n")
    (src / "_SUCCESS").write_text("")
    uri = src.as_uri()
    before = _listing_fingerprint(spark, uri)
    assert before[:2] == [uri, 1] and before == _listing_fingerprint(spark, uri)
    st = os.stat(src / "a.csv")
    os.utime(src / "a.csv", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # rewritten later
    assert _listing_fingerprint(spark, uri) != before
    assert _listing_fingerprint(spark, (tmp_path / "missing").as_uri()) == [(tmp_path / "missing").as_uri()]
