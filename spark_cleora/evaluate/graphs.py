"""Edge lists for the quality evaluations: reading, cleaning, and Cleora's clique/star expansions.

An edge list is a table of ``(src, dst)`` node ids, read as strings (``csv``/``space``/``tsv``), or an
adjacency list (``adjlist``: lines ``node nbr1 nbr2 ...``, whitespace-separated, one edge per
``(node, nbr)``; a line with fewer than two tokens - blank, or a node without neighbours - gives no edge
and is counted as ``malformed_lines``). The evaluations treat a graph as
undirected: self-loops are dropped and so is the second copy of a pair seen in both orientations (the
orientation of the first row in file order is kept, so a file listing each pair once is used as is);
both are counted in the report, never dropped silently. Null or empty ids are bad rows: an error.

Expansions (the Cleora paper's notebooks group the edges by ``src``):

* ``clique``: one hyperedge per source node ``a``: ``{a} ∪ {b : (a, b)}``, i.e. the line
  ``a b1 b2 ...`` with ``complex::reflexive::node``.
* ``star``: per source node ``a`` a transient hub ``h_a`` linked to ``a`` and to every ``b``, one line
  ``h_a<TAB>member`` per link, with ``transient::hub node`` (Cleora 1's star expansion).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..config import EmbedConfig
from ..engine.embed import run_embedding
from ..errors import BadInputError, ConfigError

log = logging.getLogger(__name__)

EXPANSIONS = ("clique", "star")
HUB_PREFIX = "\u22c6hub:"  # star hubs are entities of the graph too; node ids must not start with it
EDGE_FORMATS = ("csv", "space", "tsv", "adjlist")


@dataclass(frozen=True)
class EdgeSource:
    """Where the edges are and how to read them."""

    paths: tuple[str, ...]
    src: str | None = None
    dst: str | None = None
    format: str = "csv"
    header: bool | None = None  # default: csv has a header, space/tsv do not (adjlist: never)

    def __post_init__(self) -> None:
        if self.format not in EDGE_FORMATS:
            raise ConfigError(f"edges format must be one of {', '.join(EDGE_FORMATS)}; got {self.format!r}")
        if not self.paths:
            raise ConfigError("no --edges given")


def _adjlist_pairs(spark: SparkSession, source: EdgeSource) -> tuple[DataFrame, dict[str, int]]:
    """``(src, dst, _row, _pos)`` of every ``node nbr`` pair of adjacency-list lines (``_row``, ``_pos``:
    line and position, i.e. file order), and the count of lines with fewer than two tokens (no edge:
    reported, not dropped silently)."""
    stripped = F.regexp_replace(F.col("value"), r"^\s+|\s+$", "")  # also tabs and \r, which trim() keeps
    lines = spark.read.text(list(source.paths)).select(
        F.monotonically_increasing_id().alias("_row"), F.split(stripped, r"\s+").alias("t"))
    # split("") gives [""]: a blank line has no token at all
    lines = lines.withColumn("n", F.when(F.col("t")[0] == "", 0).otherwise(F.size("t")))
    counts = lines.agg(F.count(F.lit(1)).alias("lines"),
                       F.sum((F.col("n") < 2).cast("long")).alias("malformed")).collect()[0]
    if counts["lines"] == 0:
        raise BadInputError(f"edges {source.paths[0]!r}: no lines")
    pairs = lines.filter(F.col("n") >= 2).select(
        F.col("t")[0].alias("src"), "_row", F.posexplode(F.slice("t", 2, F.col("n") - 1)).alias("_pos", "dst"))
    counts = {"lines": int(counts["lines"]), "malformed_lines": int(counts["malformed"] or 0)}
    return pairs.select("src", "dst", "_row", "_pos"), counts


def _table_pairs(spark: SparkSession, source: EdgeSource) -> DataFrame:
    """``(src, dst, _row, _pos)`` of a csv/space/tsv edge table (``_row`` keeps file order, ``_pos`` 0)."""
    header = source.header if source.header is not None else source.format == "csv"
    sep = {"csv": ",", "tsv": "\t", "space": " "}[source.format]
    raw = spark.read.option("header", str(header).lower()).option("sep", sep).csv(list(source.paths))
    if len(raw.columns) < 2:
        raise ConfigError(f"edges {source.paths[0]!r}: expected two columns, found {raw.columns} "
                          f"(wrong --edges-format {source.format}?)")
    src, dst = source.src or raw.columns[0], source.dst or raw.columns[1]
    for c in (src, dst):
        if c not in raw.columns:
            raise ConfigError(f"edges: column {c!r} not found; the file has {raw.columns}")
    e = raw.select(F.trim(F.col(src).cast("string")).alias("src"), F.trim(F.col(dst).cast("string")).alias("dst"))
    return e.withColumn("_row", F.monotonically_increasing_id()).withColumn("_pos", F.lit(0))


def read_edges(spark: SparkSession, source: EdgeSource) -> tuple[DataFrame, dict[str, int]]:
    """Undirected, de-duplicated, loop-free edges ``(src, dst)`` as strings, and what was dropped.

    ``rows`` counts the input pairs (for ``adjlist``: the ``(node, nbr)`` pairs; ``lines`` and
    ``malformed_lines`` are added), so ``rows = self_loops_dropped + duplicates_dropped + edges``.
    """
    for p in source.paths:
        if "://" not in p and not os.path.exists(p):
            raise ConfigError(f"edges {p!r} do not exist")
    extra: dict[str, int] = {}
    if source.format == "adjlist":
        e, extra = _adjlist_pairs(spark, source)
        if extra["malformed_lines"]:
            log.warning("edges %s: %d line(s) with fewer than two tokens give no edge", source.paths[0],
                        extra["malformed_lines"])
    else:
        e = _table_pairs(spark, source)
    stats = e.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum((F.coalesce(F.col("src"), F.lit("")) == "").cast("long")
              + (F.coalesce(F.col("dst"), F.lit("")) == "").cast("long")).alias("bad"),
        F.sum((F.col("src") == F.col("dst")).cast("long")).alias("loops"),
        F.sum((F.col("src").startswith(HUB_PREFIX) | F.col("dst").startswith(HUB_PREFIX)).cast("long")).alias("hub"),
    ).collect()[0]
    if stats["rows"] == 0:
        raise BadInputError(f"edges {source.paths[0]!r}: no rows")
    if stats["bad"] or stats["hub"]:
        raise BadInputError(f"edges: {stats['bad'] or 0} null/empty node id(s), {stats['hub'] or 0} id(s) starting "
                         f"with the reserved {HUB_PREFIX!r}; fix the input")
    e = e.filter(F.col("src") != F.col("dst"))
    pair = Window.partitionBy(F.least("src", "dst"), F.greatest("src", "dst")).orderBy("_row", "_pos")
    e = e.withColumn("_n", F.row_number().over(pair)).filter(F.col("_n") == 1).select("src", "dst")
    kept = e.count()
    loops = int(stats["loops"] or 0)
    return e, {**extra, "rows": int(stats["rows"]), "self_loops_dropped": loops,
               "duplicates_dropped": int(stats["rows"]) - loops - kept, "edges": kept}


def expansion_input(edges: DataFrame, expansion: str) -> tuple[DataFrame, dict[str, Any]]:
    """Cleora text lines (``value``) of ``edges`` in the given expansion, and the matching config fields."""
    if expansion == "clique":
        lines = edges.groupBy("src").agg(F.collect_list("dst").alias("d")).select(
            F.concat_ws(" ", F.array_prepend("d", F.col("src"))).alias("value"))
        return lines, {"columns": "complex::reflexive::node"}
    if expansion == "star":
        hub = F.concat(F.lit(HUB_PREFIX), F.col("src"))
        members = edges.select(hub.alias("h"), F.col("dst").alias("m")).unionByName(
            edges.select(hub.alias("h"), F.col("src").alias("m")).distinct())
        return members.select(F.concat_ws("\t", "h", "m").alias("value")), {"columns": "transient::hub node"}
    raise ConfigError(f"expansion must be one of {', '.join(EXPANSIONS)}; got {expansion!r}")


def check_ids_for_text(edges: DataFrame) -> None:
    """Cleora text separates entities by spaces and columns by tabs: ids must contain neither."""
    bad = edges.filter(F.col("src").rlike(r"\s") | F.col("dst").rlike(r"\s")).limit(1).collect()
    if bad:
        raise BadInputError(f"edges: node ids must not contain whitespace (e.g. {bad[0]['src']!r} - {bad[0]['dst']!r})")


def embed_edges(spark: SparkSession, edges: DataFrame, *, expansion: str,
                options: dict[str, Any]) -> tuple[DataFrame, dict[str, Any]]:
    """(entity, embedding) of the nodes of ``edges`` and the embed report; ``options``: EmbedConfig fields."""
    check_ids_for_text(edges)
    lines, fields = expansion_input(edges, expansion)
    cfg = EmbedConfig(input_format="cleora-tsv", checkpoint="local", **fields, **options)
    result = run_embedding(spark, cfg, lines, store=None)
    return result.embeddings.select("entity", "embedding"), result.report


# --------------------------------------------------------------------------------------------
# CLI pieces shared by the evaluations
# --------------------------------------------------------------------------------------------

EMBED_OPTION_FIELDS = ("dim", "iterations", "markov", "init", "seed", "whiten", "residual", "multiscale",
                       "init_vectors")


def add_edge_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("graph")
    g.add_argument("--edges", nargs="+", required=required, metavar="PATH", help="edge list file(s)")
    g.add_argument("--src", help="source column (default: the first)")
    g.add_argument("--dst", help="destination column (default: the second)")
    g.add_argument("--edges-format", choices=EDGE_FORMATS, default="csv",
                   help="csv with a header (default), space/tsv separated without one, or adjlist: lines "
                        "'node nbr1 nbr2 ...' (whitespace-separated; one undirected edge per pair)")
    g.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the edge file has a header row (default: csv yes, space/tsv no)")
    g.add_argument("--expansion", choices=EXPANSIONS, default="clique",
                   help="clique (default): one hyperedge per source node and its neighbours; star: a hub per "
                        "source node")


def edge_source(ns: argparse.Namespace) -> EdgeSource:
    return EdgeSource(paths=tuple(ns.edges), src=ns.src, dst=ns.dst, format=ns.edges_format, header=ns.header)


def embed_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The embedding flags given on the command line (unset ones keep EmbedConfig's defaults)."""
    return {k: getattr(ns, k) for k in EMBED_OPTION_FIELDS if getattr(ns, k, None) is not None}


def add_output_options(p: argparse.ArgumentParser, handler: Any) -> None:
    """``--report``, ``--work-dir``, the embedding and Spark options of a recommendation evaluation."""
    from ..options import add_embedding_options, add_spark_options

    g = p.add_argument_group("output")
    g.add_argument("--report", help="write the JSON report here (atomically)")
    g.add_argument("--work-dir", help="scratch directory (default: a temporary one, removed afterwards)")
    add_embedding_options(p.add_argument_group("embedding (as `spark-cleora embed`; default --dim 256 --iterations 3)"))
    add_spark_options(p)
    p.set_defaults(handler=handler)


def write_report(path: str | None, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON atomically (temporary file + rename), marked as the tool's output."""
    if not path:
        return
    from ..storage.outputs import FILE_MARK
    from ..storage.outputs import write_report as write_json_report

    write_json_report(path, {**report, FILE_MARK: "evaluate"})
