"""Nearest neighbours by cosine similarity, computed on the cluster (no embedding table on the driver)."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from .runtime.compat import cosine_similarity
from .errors import ConfigError, UnknownEntityError


def similar(
    emb: DataFrame,
    entities: Sequence[str],
    *,
    k: int = 10,
    column: str | None = None,
) -> DataFrame:
    """The ``k`` nearest neighbours (cosine) of each entity in ``entities``, as a DataFrame.

    Parameters
    ----------
    emb
        Embeddings with ``entity`` and ``embedding`` (``array<float>``) columns, as ``embed`` writes
        them (``column`` is optional). Rows need not be unit length (whitened output is fine).
    entities
        The query entities; each must be in ``emb``.
    k
        Neighbours per query (the query itself is excluded).
    column
        Only return neighbours from this input column (e.g. products for a user in a two-column spec).

    Returns
    -------
    DataFrame
        ``query``, ``rank`` (1 = most similar), ``entity``, ``column``, ``cosine``; ties are broken by
        entity name. Zero vectors (no defined cosine) are never returned.

    Raises
    ------
    UnknownEntityError
        When a query entity is not in ``emb`` (all missing names are listed).

    Notes
    -----
    The query vectors (one per query) are joined to every row by a broadcast join and the top ``k`` per
    query are kept with a ranked window, which Spark computes per partition before the shuffle
    (window group limit), so nothing that grows with the table reaches the driver: only the query
    vectors themselves, to check that every query exists.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1; got {k}")
    names = list(dict.fromkeys(entities))
    if not names:
        raise ConfigError("no query entity given")
    if "column" not in emb.columns:
        emb = emb.withColumn("column", F.lit(None).cast("string"))
    # the query vectors only (len(entities) x dim floats) visit the driver, to check they exist
    found = (emb.filter(F.col("entity").isin(names)).select("entity", "embedding")
             .dropDuplicates(["entity"]).collect())
    missing = [n for n in names if n not in {r["entity"] for r in found}]
    if missing:
        raise UnknownEntityError(
            f"{len(missing)} of {len(names)} queried entities are not in the embeddings: "
            + ", ".join(repr(m) for m in missing[:10])
        )
    queries = emb.sparkSession.createDataFrame([(r["entity"], r["embedding"]) for r in found],
                                               "query string, q array<float>")
    candidates = emb if column is None else emb.filter(F.col("column") == column)
    scored = (
        candidates.select("entity", "column", "embedding")
        .crossJoin(F.broadcast(queries))
        .filter(F.col("entity") != F.col("query"))
        .select("query", "entity", "column",
                cosine_similarity("embedding", "q").alias("cosine"))
        .filter(F.col("cosine").isNotNull())
    )
    order = Window.partitionBy("query").orderBy(F.col("cosine").desc(), F.col("entity"))
    return (
        scored.withColumn("rank", F.row_number().over(order))
        .filter(F.col("rank") <= k)
        .select("query", F.col("rank").cast("int").alias("rank"), "entity", "column", "cosine")
    )


def nearest_neighbours(emb: DataFrame, entity: str, *, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` entities most similar to ``entity`` (cosine), best first, as ``(name, cosine)``.

    Only the query vector and the ``k`` answers travel to the driver.
    """
    rows = similar(emb, [entity], k=k).orderBy("rank").collect()
    return [(r["entity"], float(r["cosine"])) for r in rows]
