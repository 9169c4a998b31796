"""``spark-cleora demo``: the embed job on the bundled sample, then a few nearest neighbours."""

from __future__ import annotations

import os
from importlib import resources

from pyspark.sql import SparkSession

from .config import EmbedConfig
from .job import run_embed_job
from .similar import nearest_neighbours

QUERIES = ("coffee:espresso-beans", "pasta:spaghetti", "baby:diapers", "pets:dog-food")


def sample_path() -> str:
    """Path of the bundled sample event log (synthetic shop visits: user_id, item, ts)."""
    return str(resources.files("spark_cleora").joinpath("data", "sample_events.csv"))


def run_demo(spark: SparkSession, *, output: str, dim: int = 64, iterations: int = 3) -> None:
    cfg = EmbedConfig(
        inputs=(sample_path(),), input_format="csv", hyperedge="user_id", entity="item", timestamp="ts",
        session_gap=1800, dim=dim, iterations=iterations, output=output,
    )
    report = run_embed_job(spark, cfg)
    print()
    print(f"Embedded {report['entities_written']} items from {report['input_rows']} events "
          f"({report['hyperedges']} sessions) in {report['seconds_total']:.1f}s.")
    print(f"Output (Parquet: entity, column, degree, occurrences, embedding): {os.path.abspath(output)}")
    emb = spark.read.parquet(output)
    for q in QUERIES:
        nn = nearest_neighbours(emb, q, k=5)
        print(f"\nnearest to {q}:")
        for name, cos in nn:
            print(f"  {cos:6.3f}  {name}")
