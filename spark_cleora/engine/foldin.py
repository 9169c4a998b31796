"""Vectors for new entities from known ones: the Cleora propagation step restricted to the new rows.

An entity is defined by its hyperedges. Given the vectors ``X_K`` of a finished run and a table of new
events, an entity of the new events without a vector gets

    x_u <- rownorm( sum_y M[u, y] x_y )          (the row u of one Cleora iteration)

where ``M`` is the Markov matrix of the *new events' hyperedges* built with the original run's weights
(pair weight ``2 c_u c_y / n_h²`` in a hyperedge of total multiplicity ``n_h``; ``1/(|A||B|)`` for a
two-column relation) and Markov kind, and ``x_y`` is

- the original run's vector for a known entity (fixed: fold-in never changes it), and
- the previous fold-in iteration's vector for a new entity (zero before the first iteration).

Repeating the step ``iterations`` times reaches new entities connected to known ones only through other
new entities (iteration k reaches those at distance k), and lets the new entities' vectors settle with
each other's. A row that stays zero has no known entity within reach: it is counted and reported,
never given a made-up vector.

Degrees. ``M`` needs degrees only in the symmetric kind (``W / sqrt(D_u D_y)``; the left kind ``W / D_u``
scales a whole row, which the row normalisation removes). A new entity's degree is its degree in the new
events. A *known* entity keeps its degree from the original run (the ``degree`` column of the
embeddings): its row of ``M`` and its vector are the original run's, and the new events do not change
them. This also makes the result for one new entity independent of unrelated new events that happen to
touch the same known neighbours (folding in day by day or all at once gives the same vector to an
entity whose hyperedges hold only known entities).

The computation is the embedding engine's own: the new events' memberships become blocks and plans
(:func:`spark_cleora.engine.graph.build_blocks`), the vectors are routed to them and multiplied
(:func:`spark_cleora.engine.propagate.propagate`), and only the new rows are kept. The cost is linear in the
new events; the known table is only joined by entity.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..runtime.compat import cogrouped_arrow
from ..config import BadInputError, ConfigError, EmbedConfig, field_names
from .graph import blocks_for, build_blocks, build_entities, graph_counts, plans_of
from .hyperedges import cleora_text_to_memberships, events_to_memberships
from ..storage.paths import local_path, parquet_footer_rows
from .one_task import one_task_bytes
from ..runtime.machine import worker_memory_gb
from .propagate import (SLICE_COLUMNS, X_SCHEMA, X_SCHEMA_COLUMNS, block_product, load_plan, normalize_rows, propagate,
                        route_scalings, unpacked)
from ..runtime.session import job_description
from .vectors import from_list_array, pack, unpack

log = logging.getLogger(__name__)

#: the run manifest ``spark-cleora embed`` writes beside a local output
RUN_MANIFEST = "_run.json"
#: output column: the fold-in iteration that first gave the entity a vector (null: a known entity)
ITERATION_COLUMN = "fold_in_iteration"
#: unreached entities listed by name in the report
SAMPLE_SIZE = 10


def read_run_manifest(embeddings: str) -> dict[str, Any] | None:
    """The ``_run.json`` of a local embed output, or None when there is none (remote or not written)."""
    lp = local_path(embeddings)
    if lp is None:
        return None
    path = os.path.join(lp, RUN_MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def run_config(manifest: dict[str, Any]) -> EmbedConfig:
    """The :class:`EmbedConfig` a run manifest records (output destinations dropped)."""
    known = field_names()
    values = {k: v for k, v in (manifest.get("config") or {}).items() if k in known}
    values.update(output=None, output_table=None, init_vectors=None, partition_by=())
    for k in ("inputs", "multiscale"):
        if k in values:
            values[k] = tuple(values[k] or ())
    return EmbedConfig(**values)


def check_foldable(cfg: EmbedConfig) -> None:
    """Refuse runs whose vectors are not the rows of a Cleora step (with the reason and the way out)."""
    if cfg.whiten != "none":
        raise ConfigError(
            f"the embeddings were whitened (whiten={cfg.whiten}): their rows are centred and decorrelated by a "
            "transform of the whole table that is not stored, so a folded-in vector (a normalised mix of its "
            "neighbours) would not be on their scale. Fold in into a run made with --whiten none, or re-embed.")
    if cfg.multiscale:
        raise ConfigError(
            f"the embeddings concatenate iterations {','.join(map(str, cfg.multiscale))} (--multiscale): each part "
            "is a different iteration's vector and would need its own propagation. Fold in into a run without "
            "--multiscale, or re-embed.")


@dataclass
class FoldInResult:
    """The folded-in entities (lazy; ``entity, column, degree, occurrences, embedding,
    fold_in_iteration``) and what the fold-in did."""

    embeddings: DataFrame
    report: dict[str, Any] = field(default_factory=dict)


def _checkpoint(df: DataFrame) -> DataFrame:
    return df.localCheckpoint(eager=True)


#: up to this many entities in the new events, the known table is joined map-side (the new events'
#: entity names broadcast): the known table is scanned once, never shuffled
BROADCAST_ENTITIES = 500_000


def _start_rows(entities: DataFrame, known: DataFrame, *, markov: str, dim: int, small: bool) -> DataFrame:
    """The fold-in's iteration 0 (``X_SCHEMA`` plus ``known``): the known vectors with their original
    degree; zero vectors with the new events' degree for the other entities. ``small``: the new events
    have at most :data:`BROADCAST_ENTITIES` entities."""
    k = known.select(F.col("entity"), F.col("degree").cast("double").alias("_kdeg"),
                     F.col("embedding").alias("_kvec"))
    if small:  # only the known rows of the new events' entities, found without shuffling the known table
        k = F.broadcast(k.join(F.broadcast(entities.select("entity")), "entity"))
    zero = F.array_repeat(F.lit(0.0).cast("float"), dim)
    rows = entities.join(k, "entity", "left").select(
        "id", "blocks", F.col("_kvec").isNotNull().alias("known"),
        F.when(F.col("_kvec").isNotNull(), F.col("_kdeg")).otherwise(F.col("degree")).alias("degree"),
        F.coalesce(F.col("_kvec").cast("array<float>"), zero).alias("_v"),
    ).select("id", "blocks", "known", *route_scalings(markov), "_v")

    def packed(batches):
        for b in batches:
            vec = pack(from_list_array(b.column("_v"), dim))
            cols = [b.column(n) for n in ("id", "pre", "post", "blocks", "known")]
            yield pa.RecordBatch.from_arrays([*cols, vec], names=["id", "pre", "post", "blocks", "known", "vec"])

    return rows.mapInArrow(packed, f"id long, pre double, post double, blocks array<int>, known boolean, vec binary")


def _reached(x: DataFrame, *, dim: int) -> DataFrame:
    """``x`` plus ``reached``: the row is not all zeros."""

    def flag(batches):
        for b in batches:
            v = unpack(b.column("vec"), dim)
            yield b.append_column("reached", pa.array(np.any(v != 0, axis=1)))

    return x.mapInArrow(flag, f"{X_SCHEMA}, reached boolean")


_ONE_TASK_SCHEMA = f"id long, pre double, post double, blocks array<int>, vec binary, {ITERATION_COLUMN} int"


def iterate_in_one_task(start: DataFrame, plans: DataFrame, *, dim: int, iterations: int,
                        residual: float) -> DataFrame:
    """All fold-in iterations in one Python task (small new-event graphs): the same block products and
    row normalisation as :func:`spark_cleora.engine.propagate.propagate`, without a shuffle per iteration.
    Returns the new rows (``X_SCHEMA`` plus ``fold_in_iteration``, null where still unreached)."""
    key = F.lit(0).alias("_task")
    left = start.select(key, "id", "pre", "post", "blocks", "known", "vec")
    right = plans.select(key, "plan")

    def run(rows: pa.Table, blocks: pa.Table) -> pa.Table:
        ids = rows.column("id").to_numpy()
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        x = unpack(rows.column("vec"), dim)[order].astype(np.float64)
        pre, post = rows.column("pre").to_numpy()[order], rows.column("post").to_numpy()[order]
        known = rows.column("known").to_numpy(zero_copy_only=False)[order]
        plans_ = [load_plan(b) for b in blocks.column("plan").to_pylist()]
        where = [np.searchsorted(ids, p["ids"]) for p in plans_]
        made = np.zeros(len(ids), dtype=np.int32)  # 0: not reached yet
        factor = residual / (1.0 - residual) if residual else 0.0
        for k in range(1, iterations + 1):
            y = np.zeros_like(x)
            for p, w in zip(plans_, where):
                for lo in range(0, dim, SLICE_COLUMNS):
                    y[w, lo:lo + SLICE_COLUMNS] += block_product(p, x[w, lo:lo + SLICE_COLUMNS], pre[w], post[w])
            if factor:
                y += factor * x
            normalize_rows(y)
            x[~known] = y[~known]
            made[(made == 0) & ~known & np.any(y != 0, axis=1)] = k
        new = ~known
        return pa.table({
            "id": pa.array(ids[new]), "pre": pa.array(pre[new]), "post": pa.array(post[new]),
            "blocks": rows.column("blocks").take(pa.array(order[new])).cast(pa.list_(pa.int32())),
            "vec": pack(x[new]), ITERATION_COLUMN: pa.array(np.where(made[new] > 0, made[new], 0), pa.int32(),
                                                            mask=made[new] == 0),
        })

    return cogrouped_arrow(left, right, "_task", run, _ONE_TASK_SCHEMA, num_partitions=1)


def fold_in(spark: SparkSession, known: DataFrame, source: DataFrame, cfg: EmbedConfig, *,
            iterations: int = 3, include_known: bool = False) -> FoldInResult:
    """Vectors for the entities of ``source`` that ``known`` has none for (see the module docstring).

    Parameters
    ----------
    known
        The original run's output (``entity``, ``degree``, ``embedding``; ``column``, ``occurrences``).
    source
        The new events (or Cleora text lines in ``value``), read as ``cfg`` says.
    cfg
        The original run's configuration (``dim``, ``markov``, ``residual``, column spec) with the new
        events' options (hyperedge, entity, timestamp, session gap, weight, dedupe, bad-row policy).
    iterations
        Fold-in iterations (>= 1): iteration k reaches new entities k hyperedges away from a known one.
    include_known
        Also return the known rows (``fold_in_iteration`` null).

    Returns
    -------
    FoldInResult
        Only entities that got a vector (never a made-up one); the report counts the others
        (``unreached``, with a sample of names in ``unreached_sample``).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"iterations must be a positive integer; got {iterations!r}")
    check_foldable(cfg)
    t0 = time.perf_counter()
    dim, columns = cfg.dim, cfg.column_spec
    first = known.select(F.size("embedding").alias("d")).first()  # one row: the known table's dimension
    if first is None or first["d"] != dim:
        raise ConfigError(f"the known embeddings have dimension {None if first is None else first['d']}, "
                          f"the run's dim is {dim}")
    reflexive = len(columns) == 1
    report: dict[str, Any] = {"iterations": iterations, "markov": cfg.markov, "residual": cfg.residual, "dim": dim}
    with job_description(spark, "spark_cleora fold-in: read new events"):
        if cfg.input_format == "cleora-tsv":
            raw, rej = cleora_text_to_memberships(source, cfg)
            validation, units = None, rej.accepted_units
        else:
            raw, validation = events_to_memberships(source, cfg)
            # (only to size the blocks) local Parquet: from the footers, without a Spark job
            units = None if cfg.num_blocks else (
                parquet_footer_rows(cfg.inputs) if cfg.input_format == "parquet" and cfg.inputs else None)
            if units is None and not cfg.num_blocks:
                units = source.count()
        if units == 0:
            raise BadInputError("fold-in: the new events are empty (no rows were read)")
    num_blocks = cfg.num_blocks or blocks_for(units, dim=dim, block_memberships=cfg.block_memberships,
                                              memory_gb=cfg.block_memory_gb or worker_memory_gb(spark),
                                              parallelism=max(1, int(spark.conf.get("spark.sql.shuffle.partitions"))))
    with job_description(spark, "spark_cleora fold-in: graph of the new events"):
        blocks = _checkpoint(build_blocks(raw, reflexive=reflexive, num_blocks=num_blocks))
        counts = graph_counts(blocks)
    if validation is not None:
        rej = validation.settle(counts.input_rows, units=counts.input_rows.get(None, 0))
    report.update(input_rows=rej.input_rows, rejected=rej.counts, hyperedges=counts.hyperedges,
                  memberships=counts.memberships, num_blocks=num_blocks)
    entities = build_entities(blocks, columns)  # (from the checkpointed blocks: cheap to derive twice)
    report["seconds_graph"] = round(time.perf_counter() - t0, 3)
    start = _checkpoint(_start_rows(entities, known, markov=cfg.markov, dim=dim,
                                    small=counts.shares <= BROADCAST_ENTITIES))
    fixed = start.filter(F.col("known")).select(*X_SCHEMA_COLUMNS)
    new = start.filter(~F.col("known")).select(*X_SCHEMA_COLUMNS, F.lit(None).cast("int").alias(ITERATION_COLUMN))
    plans = plans_of(blocks)
    report["seconds_to_start"] = round(time.perf_counter() - t0, 3)
    report["iteration_seconds"] = []
    need = one_task_bytes(entities=counts.shares, dim=dim, kept=2, memberships=counts.memberships,
                          hyperedges=counts.hyperedges, shares=counts.shares)
    engine = cfg.engine
    if engine == "auto":
        engine = "one-task" if need <= (cfg.block_memory_gb or worker_memory_gb(spark)) * 2**30 else "shuffle"
    report["engine"] = engine
    if engine == "one-task":
        with job_description(spark, f"spark_cleora fold-in: iterations 1-{iterations} in one task"):
            new = _checkpoint(iterate_in_one_task(start, plans, dim=dim, iterations=iterations, residual=cfg.residual))
        report["iteration_seconds"] = [round(time.perf_counter() - t0 - report["seconds_to_start"], 3)]
    for k in range(1, iterations + 1) if engine == "shuffle" else ():
        t_it = time.perf_counter()
        with job_description(spark, f"spark_cleora fold-in: iteration {k}/{iterations}"):
            x = fixed.unionByName(new.select(*X_SCHEMA_COLUMNS))
            nxt = _reached(propagate(x, plans, dim=dim, num_blocks=num_blocks, residual=cfg.residual), dim=dim)
            made = new.select("id", ITERATION_COLUMN)
            new = _checkpoint(nxt.join(made, "id").select(
                *X_SCHEMA_COLUMNS,
                F.coalesce(F.col(ITERATION_COLUMN), F.when(F.col("reached"), F.lit(k))).alias(ITERATION_COLUMN)))
        report["iteration_seconds"].append(round(time.perf_counter() - t_it, 3))
    ent = entities.select("id", "entity", "column", "output", "degree", "occurrences")
    new = new.join(ent.filter("output"), "id")  # transient entities propagate but are not written
    per_iteration = {r[0]: int(r[1]) for r in new.groupBy(ITERATION_COLUMN).count().collect()}  # <= iterations+1
    report["unreached"] = per_iteration.pop(None, 0)
    report["folded_in"] = sum(per_iteration.values())
    report["folded_in_per_iteration"] = {str(k): per_iteration[k] for k in sorted(per_iteration)}
    report["unreached_sample"] = sorted(
        r["entity"] for r in new.filter(F.col(ITERATION_COLUMN).isNull()).select("entity").limit(SAMPLE_SIZE).collect()
    ) if report["unreached"] else []
    if report["unreached"]:
        log.warning("fold-in: %d new entities have no known entity within %d hyperedge(s) and get no vector "
                    "(e.g. %s)", report["unreached"], iterations, ", ".join(report["unreached_sample"]))
    got = new.filter(F.col(ITERATION_COLUMN).isNotNull())
    out = unpacked(got.select("id", "vec"), dim=dim).join(got.drop("vec"), "id").select(
        "entity", "column", F.col("degree").cast("double").alias("degree"),
        F.col("occurrences").cast("double").alias("occurrences"), F.col("vec").alias("embedding"),
        F.col(ITERATION_COLUMN).cast("int").alias(ITERATION_COLUMN))
    if include_known:
        base = known.select("entity", "column", F.col("degree").cast("double").alias("degree"),
                            F.col("occurrences").cast("double").alias("occurrences"),
                            F.col("embedding").cast("array<float>").alias("embedding"),
                            F.lit(None).cast("int").alias(ITERATION_COLUMN))
        out = base.unionByName(out)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return FoldInResult(out, report)
