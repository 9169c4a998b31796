# Databricks notebook source
# MAGIC %md
# MAGIC # Cleora embeddings and EMDE sketches of an event table with spark_cleora
# MAGIC
# MAGIC Embeds the entities of an event table (`hyperedge` = user or session, `entity` = item) with
# MAGIC Cleora, writes them to a table, shows a health summary and a few nearest neighbours, then fits an
# MAGIC EMDE coder on the embeddings and builds one decayed sketch per customer.
# MAGIC Everything is a library call on the notebook's `spark` session, so it runs on classic clusters,
# MAGIC on Spark Connect (serverless, standard access mode) and, outside Databricks, as a plain script
# MAGIC (`python notebooks/embed_table.py`, parameters from `SPARK_CLEORA_<WIDGET>` environment
# MAGIC variables, the bundled sample as input).
# MAGIC
# MAGIC **Parameters** are the widgets above; a job's `notebook_task.base_parameters` sets them.
# MAGIC Leave `input_table` empty to embed the bundled sample shop log.

# COMMAND ----------

# MAGIC %pip install --no-deps /Volumes/main/default/libs/spark_cleora-0.1.0-py3-none-any.whl xxhash

# COMMAND ----------

import os

from pyspark.sql import SparkSession

try:
    widgets = dbutils.widgets  # noqa: F821 (Databricks defines dbutils in notebooks)
except NameError:  # a plain Python process: defaults, overridden by SPARK_CLEORA_<NAME> variables

    class _EnvWidgets:
        """The part of ``dbutils.widgets`` this notebook uses, backed by environment variables."""

        def __init__(self) -> None:
            self._values: dict[str, str] = {}

        def text(self, name: str, default: str, label: str | None = None) -> None:
            self._values[name] = os.environ.get(f"SPARK_CLEORA_{name.upper()}", default)

        def dropdown(self, name: str, default: str, choices: list[str], label: str | None = None) -> None:
            self.text(name, default, label)
            if self._values[name] not in choices:
                raise ValueError(f"widget {name}: {self._values[name]!r} is not one of {choices}")

        def get(self, name: str) -> str:
            return self._values[name]

    widgets = _EnvWidgets()

widgets.text("input_table", "", "Events table (empty: bundled sample)")
widgets.text("hyperedge", "user_id", "Hyperedge column (user / session)")
widgets.text("entity", "item", "Entity column (item)")
widgets.text("timestamp", "ts", "Timestamp column (empty: none)")
widgets.text("session_gap", "1800", "Session gap in seconds (empty: whole user history)")
widgets.text("dim", "128", "Embedding dimension")
widgets.text("iterations", "4", "Iterations")
widgets.dropdown("init", "siphash", ["siphash", "fx"], "Start vectors")
widgets.dropdown("whiten", "none", ["none", "every", "final"], "PCA whitening")
widgets.text("work_dir", "", "Work dir for resumable iterations (empty: localCheckpoint)")
widgets.text("output_table", "", "Output table (empty: do not write)")
widgets.dropdown("output_format", "auto", ["auto", "delta", "parquet"], "Table format (auto: delta if available)")
widgets.text("query", "", "Entity to show neighbours of (empty: the highest-degree one)")
widgets.text("sketch_table", "", "EMDE sketches table (empty: do not write)")
widgets.text("customer", "", "Customer column for sketches (empty: the hyperedge column)")
widgets.text("emde_depth", "10", "EMDE partitionings per coder (N)")
widgets.text("emde_bits", "7", "EMDE hyperplanes per partitioning (K)")
widgets.text("half_life", "604800", "Sketch decay half-life in seconds (empty: no decay)")


def _param(name: str, cast=str):
    """A widget's value as ``cast``, or None when it is empty (widgets are always strings)."""
    value = widgets.get(name).strip()
    return cast(value) if value else None


params = {
    "hyperedge": _param("hyperedge"),
    "entity": _param("entity"),
    "timestamp": _param("timestamp"),
    "session_gap": _param("session_gap", float),
    "dim": _param("dim", int),
    "iterations": _param("iterations", int),
    "init": _param("init"),
    "whiten": _param("whiten"),
    "work_dir": _param("work_dir"),
}
if params["timestamp"] is None:
    params["session_gap"] = None
print("parameters:", params)

# COMMAND ----------

from spark_cleora import EmbedConfig, embed  # noqa: E402
from spark_cleora.demo import sample_path  # noqa: E402
from spark_cleora.emde import build_sketches, fit_coder, item_codes  # noqa: E402
from spark_cleora.explore import problems, summarize  # noqa: E402
from spark_cleora.similar import similar  # noqa: E402
from spark_cleora.storage.tables import delta_available, write_table  # noqa: E402

# Databricks provides `spark`; elsewhere the active session, or a new local one.
spark = globals().get("spark") or SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
EmbedConfig(input_format="dataframe", **params)  # validate the widgets before any Spark work
fmt = _param("output_format")
if fmt == "auto":  # tables: Delta where the session has it (Databricks), else Parquet
    fmt = "delta" if delta_available(spark) else "parquet"

input_table = _param("input_table")
if input_table:
    events = spark.read.table(input_table)
else:
    events = spark.read.option("header", "true").csv(sample_path())

# COMMAND ----------

emb = embed(events, **params)

output_table = _param("output_table")
if output_table:
    write_table(emb, output_table, fmt=fmt)  # replaced atomically
    emb = spark.read.table(output_table)
    print(f"wrote {output_table} ({fmt})")

# COMMAND ----------

summary = summarize(emb)
print(f"{summary['rows']} entities, dim {summary['dim']['max']}, "
      f"L2 norm {summary['norm']['min']:.4f}..{summary['norm']['max']:.4f}")
if problems(summary):
    raise RuntimeError("unhealthy embeddings: " + "; ".join(problems(summary)))

query = _param("query") or emb.orderBy(emb["degree"].desc(), emb["entity"]).first()["entity"]
neighbours = similar(emb, [query], k=10).orderBy("rank")
if "display" in globals():
    display(neighbours)  # noqa: F821 (Databricks)
else:
    neighbours.show(truncate=False)

# COMMAND ----------

# MAGIC %md
# MAGIC ## EMDE sketches
# MAGIC A density-dependent LSH coder fitted on the item embeddings, then one sparse, time-decayed sketch
# MAGIC per customer (`customer`, `idx`, `val`, `as_of`, `n_events`).

# COMMAND ----------

coder = fit_coder([emb], depth=_param("emde_depth", int), bits=_param("emde_bits", int), seed=0)
codes = item_codes(coder, [emb])
sketched = build_sketches(events, codes, customer=_param("customer") or params["hyperedge"],
                          item=params["entity"], timestamp=params["timestamp"],
                          half_life=_param("half_life", float) if params["timestamp"] else None)
sketches = sketched.sketches
sketch_table = _param("sketch_table")
if sketch_table:
    write_table(sketches, sketch_table, fmt=fmt)
    sketches = spark.read.table(sketch_table)
    print(f"wrote {sketch_table} ({fmt})")
print(f"coder {coder.coder_id}: {sketched.report}")
if "display" in globals():
    display(sketches.limit(10))  # noqa: F821 (Databricks)
else:
    sketches.show(5, truncate=80)
