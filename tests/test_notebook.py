"""The Databricks notebook: its source format, its widgets under a stand-in dbutils, and its whole code
path on a plain SparkSession (no dbutils, parameters from SPARK_CLEORA_<WIDGET> variables)."""

from __future__ import annotations

import os
import runpy

import numpy as np
import pytest

from spark_cleora.demo import sample_path

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "notebooks", "embed_table.py")
SEPARATOR = "\n# COMMAND ----------\n"


def _cells() -> list[str]:
    text = open(NOTEBOOK, encoding="utf-8").read()
    assert text.startswith("# Databricks notebook source\n")
    return text.split(SEPARATOR)


class _FakeWidgets:
    """Records widget definitions and answers ``get`` from ``values`` (or the default), as dbutils does."""

    def __init__(self, values: dict[str, str]):
        self.values, self.defined = values, {}

    def text(self, name, default, label=None):
        self.defined[name] = default

    def dropdown(self, name, default, choices, label=None):
        assert default in choices
        self.defined[name] = default

    def get(self, name):
        return self.values.get(name, self.defined[name])


class _FakeDbutils:
    def __init__(self, values):
        self.widgets = _FakeWidgets(values)


def test_notebook_is_databricks_source_and_reads_widgets_from_dbutils():
    cells = _cells()
    assert all(line.startswith("# MAGIC") for line in cells[0].splitlines()[2:] if line)  # markdown cell
    assert cells[1].strip().startswith("# MAGIC %pip install")
    g = {"dbutils": _FakeDbutils({"dim": "64", "timestamp": "", "init": "fx"})}
    exec(compile(cells[2], NOTEBOOK, "exec"), g)  # the parameters cell, as Databricks runs it
    assert g["params"] == {"hyperedge": "user_id", "entity": "item", "timestamp": None, "session_gap": None,
                           "dim": 64, "iterations": 4, "init": "fx", "whiten": "none", "work_dir": None}
    assert set(g["dbutils"].widgets.defined) >= {"input_table", "output_table", "output_format", "query"}


def test_notebook_runs_on_a_plain_session_without_dbutils(spark, monkeypatch, capsys):
    spark.read.option("header", "true").csv(sample_path()).createOrReplaceTempView("nb_events")
    for t in ("nb_item_emb", "nb_sketches"):
        spark.sql(f"DROP TABLE IF EXISTS {t}")
    for name, value in {"input_table": "nb_events", "dim": "8", "iterations": "2", "output_table": "nb_item_emb",
                        "query": "coffee:espresso-beans", "sketch_table": "nb_sketches", "emde_depth": "4",
                        "emde_bits": "3"}.items():
        monkeypatch.setenv(f"SPARK_CLEORA_{name.upper()}", value)
    ns = runpy.run_path(NOTEBOOK, run_name="__main__")
    out = capsys.readouterr().out
    assert "wrote nb_item_emb (parquet)" in out  # auto: no Delta on this classpath
    assert "48 entities, dim 8" in out
    table = spark.read.table("nb_item_emb")
    vecs = np.asarray([r["embedding"] for r in table.collect()])
    assert vecs.shape == (48, 8)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    hits = ns["neighbours"].collect()
    assert [r["rank"] for r in hits] == list(range(1, 11)) and hits[0]["query"] == "coffee:espresso-beans"
    assert hits[0]["entity"].startswith("coffee:")  # the sample's shops cluster by category

    # EMDE: one sketch per user of the sample, every event counted, 4 partitionings x 2**3 buckets
    events = spark.read.table("nb_events")
    sk = spark.read.table("nb_sketches").collect()
    assert "wrote nb_sketches (parquet)" in out
    assert sorted(r["customer"] for r in sk) == sorted(r["user_id"] for r in events.select("user_id").distinct().collect())
    assert sum(r["n_events"] for r in sk) == events.count()
    for r in sk[:50]:
        assert list(r["idx"]) == sorted(set(r["idx"])) and 0 <= min(r["idx"]) and max(r["idx"]) < 4 * 8
        assert min(r["val"]) > 0
    for t in ("nb_item_emb", "nb_sketches"):
        spark.sql(f"DROP TABLE {t}")


def test_notebook_rejects_a_bad_widget_value_before_spark_work(monkeypatch):
    monkeypatch.setenv("SPARK_CLEORA_WHITEN", "sometimes")
    with pytest.raises(ValueError, match="widget whiten"):
        runpy.run_path(NOTEBOOK, run_name="__main__")


def test_wheel_task_entry_point_fails_the_task_on_errors(monkeypatch, capsys):
    """Databricks calls the entry point and ignores its return value: errors must raise SystemExit."""
    import tomllib
    from importlib import import_module

    scripts = tomllib.load(open(os.path.join(os.path.dirname(NOTEBOOK), os.pardir, "pyproject.toml"), "rb"))[
        "project"]["scripts"]
    module, func = scripts["spark_cleora_job"].split(":")
    job_main = getattr(import_module(module), func)
    monkeypatch.setattr("sys.argv", ["spark_cleora_job", "embed", "--hyperedge", "u", "--entity", "i"])
    with pytest.raises(SystemExit) as exc:
        job_main()
    assert exc.value.code == 2 and "no INPUT given" in capsys.readouterr().err


def test_documented_job_example_matches_the_entry_point_and_the_widgets():
    import json
    import re
    import tomllib

    root = os.path.join(os.path.dirname(NOTEBOOK), os.pardir)
    page = open(os.path.join(root, "docs", "deployment.md"), encoding="utf-8").read()
    job = json.loads(re.search(r"## Databricks.*?```json\n(.*?)```", page, re.S).group(1))
    project = tomllib.load(open(os.path.join(root, "pyproject.toml"), "rb"))["project"]
    wheel = job["tasks"][0]["python_wheel_task"]
    assert wheel["package_name"] == project["name"].replace("-", "_")
    assert wheel["entry_point"] in project["scripts"] and wheel["parameters"][0] == "embed"
    from spark_cleora.cli import build_parser

    build_parser().parse_args(wheel["parameters"])  # the parameters are valid spark-cleora arguments
    g = {"dbutils": _FakeDbutils({})}
    exec(compile(_cells()[2], NOTEBOOK, "exec"), g)
    assert set(job["tasks"][1]["notebook_task"]["base_parameters"]) <= set(g["dbutils"].widgets.defined)
