"""Nearest neighbours by cosine similarity, computed on the cluster (no embedding table on the driver)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def nearest_neighbours(emb: DataFrame, entity: str, *, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` entities most similar to ``entity`` (cosine), best first.

    Only the query vector and the ``k`` answers travel to the driver.
    """
    query = emb.filter(F.col("entity") == entity).select("embedding").limit(1).collect()
    if not query:
        raise KeyError(f"entity {entity!r} is not in the embeddings")
    q = F.lit(query[0]["embedding"]).cast("array<float>")
    scored = (
        emb.filter(F.col("entity") != entity)
        .select("entity", F.vector_cosine_similarity(F.col("embedding"), q).alias("cosine"))
        .orderBy(F.col("cosine").desc(), F.col("entity"))
        .limit(k)
    )
    return [(r["entity"], float(r["cosine"])) for r in scored.collect()]
