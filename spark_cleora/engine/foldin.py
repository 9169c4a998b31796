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
(:func:`spark_cleora.engine.graph.blocks_of_partition`), the known vectors of their entities are multiplied
through them (:func:`spark_cleora.engine.propagate.block_product`), and only the new rows are kept. New
events small enough for one Python task (the default) take one Spark job: the known table is scanned
once, semi-joined map-side with the new events' entity names, and only those known neighbours meet
the new events in the task. Larger new events take the shuffle engine (blocks, then one
:func:`spark_cleora.engine.propagate.propagate` per iteration). The known table is never shuffled or rewritten.
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

from ..config import EmbedConfig, field_names
from ..errors import BadInputError, ConfigError
from .graph import block_groups, blocks_for, build_blocks, build_entities, graph_counts, plans_of
from .hyperedges import REJECT as _REJECT
from .hyperedges import ROWS as _ROWS
from .hyperedges import cleora_text_to_memberships, events_to_memberships
from ..storage.paths import local_path, parquet_footer_rows
from .one_task import BYTES_PER_MEMBERSHIP, BYTES_PER_SHARE
from ..runtime.machine import group_parallelism, shuffle_partitions, worker_memory_gb
from .propagate import (SLICE_COLUMNS, X_SCHEMA, X_SCHEMA_COLUMNS, Scratch, block_product, load_plan, normalize_rows,
                        prepare_plan, propagate, route_scalings, unpacked)
from ..runtime.session import job_description
from .vectors import from_list_array, pack, to_list_array, unpack

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

    return rows.mapInArrow(packed, "id long, pre double, post double, blocks array<int>, known boolean, vec binary")


def _reached(x: DataFrame, *, dim: int) -> DataFrame:
    """``x`` plus ``reached``: the row is not all zeros."""

    def flag(batches):
        for b in batches:
            v = unpack(b.column("vec"), dim)
            yield b.append_column("reached", pa.array(np.any(v != 0, axis=1)))

    return x.mapInArrow(flag, f"{X_SCHEMA}, reached boolean")


#: the one-pass fold-in's output: the new rows, and one row (``entity`` null) carrying the task's report
_ONE_PASS_SCHEMA = ("entity string, column string, degree double, occurrences double, embedding array<float>, "
                    f"{ITERATION_COLUMN} int, _report string")
_OUT_ROWS = 1 << 14  # rows per output batch (Arrow list offsets are int32: keep batches small)
_NEW_EVENTS, _KNOWN = 0, 1  # the two parts of the one-pass task's input


#: the one-pass task's bytes per unit x dimension: its float64 rows and their float64 products (8 + 8),
#: the products' temporaries (8), two float32 copies (8), and the per-hyperedge sums (16)
_ONE_PASS_BYTES_PER_DIM = 48


def one_pass_bytes(units: int, dim: int) -> int:
    """Upper bound of the one-pass task's memory for ``units`` input rows (each row at most one
    membership, hyperedge and entity; every entity possibly a known one with its vector). Its own
    bound: the one-pass task keeps float64 rows and products (the one-task engine's float32 rows and
    slices do not apply)."""
    return units * dim * _ONE_PASS_BYTES_PER_DIM + units * (BYTES_PER_MEMBERSHIP + BYTES_PER_SHARE)


def fold_in_one_pass(raw: DataFrame, known: DataFrame, *, columns: tuple, markov: str, dim: int, iterations: int,
                     residual: float) -> DataFrame:
    """The whole fold-in of small new events in one Python task (``_ONE_PASS_SCHEMA``, lazily).

    One Spark job: the known table is scanned once and joined map-side with the new events' entity
    names (broadcast), so only the new events' known neighbours leave the scan; they and the new
    events' memberships meet in one task, which builds the new events' graph (one block, the engine's
    own :func:`spark_cleora.engine.graph.blocks_of_partition`), runs the iterations and emits the new rows
    plus a report row. Nothing else of the known table is read, shuffled or written.
    """
    flags = [c for c in (_REJECT, _ROWS) if c in raw.columns]
    events = raw.select(F.lit(_NEW_EVENTS).alias("_part"), "h", "side", "col", "entity", "weight", *flags,
                        F.xxhash64("entity").alias("id"), F.hash("entity").alias("_id2"),
                        F.lit(0).alias("block"))
    names = raw.select("entity")  # (not distinct: a semi-join needs no unique keys, and this needs no shuffle)
    neighbours = known.join(F.broadcast(names), "entity", "left_semi").select(
        F.lit(_KNOWN).alias("_part"), "entity", F.xxhash64("entity").alias("id"),
        F.col("degree").cast("double").alias("_kdeg"), F.col("embedding").cast("array<float>").alias("_kvec"))
    both = events.unionByName(neighbours, allowMissingColumns=True).repartition(1)
    params = {"reflexive": len(columns) == 1, "col_names": [c.name for c in columns],
              "outputs": [not c.transient for c in columns], "markov": markov, "dim": dim,
              "iterations": iterations, "residual": residual}

    def run(batches):
        yield from _one_pass(batches, **params)

    return both.mapInArrow(run, _ONE_PASS_SCHEMA)


def _one_pass(batches, *, reflexive, col_names, outputs, markov, dim, iterations, residual):
    import pyarrow.compute as pc

    from .graph import ENTITY_PART, INPUT_ROWS, PLAN, blocks_of_partition
    from .one_task import _entities

    t0 = time.perf_counter()
    batches = [b for b in batches if b.num_rows]
    t = pa.Table.from_batches(batches) if batches else None
    report: dict[str, Any] = {"input_rows": [], "memberships": 0, "hyperedges": 0}
    part = t.column("_part") if t is not None else None
    ev = t.filter(pc.equal(part, _NEW_EVENTS)) if t is not None else None
    kn = t.filter(pc.equal(part, _KNOWN)) if t is not None else None
    graph = pa.Table.from_batches(list(blocks_of_partition(ev.to_batches(), reflexive=reflexive))) \
        if ev is not None and ev.num_rows else None
    del t, ev, batches
    kind = graph.column("kind") if graph is not None else None
    if graph is not None:
        inputs = graph.filter(pc.equal(kind, INPUT_ROWS))
        report["input_rows"] = [[r, n] for r, n in zip(inputs.column("entity").to_pylist(),
                                                       inputs.column("rows").to_pylist())]
    plan_rows = graph.filter(pc.equal(kind, PLAN)) if graph is not None else None
    if plan_rows is None or plan_rows.num_rows == 0:  # no accepted row: nothing to fold in
        yield _report_batch({**report, "entities": 0, "known_neighbours": 0, "folded_in_per_iteration": {},
                             "unreached": 0, "unreached_sample": [], "iteration_seconds": []})
        return
    report["memberships"] = int(plan_rows.column("memberships")[0].as_py())
    report["hyperedges"] = int(plan_rows.column("hyperedges")[0].as_py())
    ent = _entities(graph.filter(pc.equal(kind, ENTITY_PART)), outputs)
    plan = load_plan(plan_rows.column("plan")[0].as_buffer())
    prepare_plan(plan, drop=True)
    del graph
    ids, n = ent["ids"], len(ent["ids"])
    x = np.zeros((n, dim), dtype=np.float64)
    known = np.zeros(n, dtype=bool)
    degree = np.asarray(ent["degree"], dtype=np.float64).copy()
    if kn.num_rows:  # the known neighbours, matched by key and name (a key collision is not a match)
        lengths = pc.fill_null(pc.list_value_length(kn.column("_kvec")), 0).to_numpy(zero_copy_only=False)
        if np.any(lengths != dim):  # checked here: no job of its own reads the known table
            yield _report_batch({**report, "known_dim": int(lengths[lengths != dim][0])})
            return
        kid = kn.column("id").to_numpy()
        pos = np.minimum(np.searchsorted(ids, kid), n - 1)
        hit = (ids[pos] == kid) & pc.equal(ent["names"].take(pa.array(pos)),
                                            kn.column("entity").combine_chunks()).to_numpy(zero_copy_only=False)
        pos = pos[hit]
        known[pos] = True
        x[pos] = from_list_array(kn.column("_kvec"), dim)[hit]
        degree[pos] = kn.column("_kdeg").to_numpy()[hit]
    if markov == "left":
        pre, post = np.ones(n), 1.0 / degree
    else:
        pre = post = 1.0 / np.sqrt(degree)
    where = np.searchsorted(ids, plan["ids"])
    t_ready = time.perf_counter()
    made = _iterate_new_rows(x, known, plan, where, pre[where], post[where], dim=dim, iterations=iterations,
                             residual=residual)
    new = ~known & ent["output"]  # transient entities propagate but are not written
    rows, left = np.flatnonzero(new & (made > 0)), np.flatnonzero(new & (made == 0))
    per_iteration = np.bincount(made[rows], minlength=iterations + 1)
    names = ent["names"]
    report.update(entities=n, known_neighbours=int(known.sum()),
                  folded_in_per_iteration={str(k): int(c) for k, c in enumerate(per_iteration) if k and c},
                  unreached=len(left),
                  unreached_sample=sorted(names.take(pa.array(left)).to_pylist())[:SAMPLE_SIZE],
                  prepare_seconds=round(t_ready - t0, 3),
                  iteration_seconds=[round(time.perf_counter() - t_ready, 3)])
    yield _report_batch(report)
    column = pa.array(np.asarray(col_names, dtype=object)[ent["col"][rows]], pa.string())
    out_names = names.take(pa.array(rows))
    for lo in range(0, len(rows), _OUT_ROWS):
        r = rows[lo:lo + _OUT_ROWS]
        m = len(r)
        yield pa.RecordBatch.from_arrays(
            [out_names.slice(lo, m), column.slice(lo, m), pa.array(ent["degree"][r], pa.float64()),
             pa.array(ent["occurrences"][r], pa.float64()), to_list_array(x[r]),
             pa.array(made[r], pa.int32()), pa.nulls(m, pa.string())],
            names=["entity", "column", "degree", "occurrences", "embedding", ITERATION_COLUMN, "_report"])


def _wrong_dim(found: int | None, dim: int) -> None:
    raise ConfigError(f"the known embeddings have dimension {found}, the run's dim is {dim}")


def _report_batch(report: dict[str, Any]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.nulls(1, pa.string()), pa.nulls(1, pa.string()), pa.nulls(1, pa.float64()), pa.nulls(1, pa.float64()),
         pa.nulls(1, pa.list_(pa.float32())), pa.nulls(1, pa.int32()), pa.array([json.dumps(report)], pa.string())],
        names=["entity", "column", "degree", "occurrences", "embedding", ITERATION_COLUMN, "_report"])


def _iterate_new_rows(x: np.ndarray, known: np.ndarray, plan: dict[str, Any], where: np.ndarray, pre: np.ndarray,
                      post: np.ndarray, *, dim: int, iterations: int, residual: float) -> np.ndarray:
    """The fold-in iterations on ``x`` (float64 [n, dim], in place: the new rows are replaced, the known
    rows kept): the same block product and row normalisation as :func:`spark_cleora.engine.propagate.propagate`.
    Returns per row the iteration that first gave it a non-zero vector (0: none)."""
    made = np.zeros(len(x), dtype=np.int32)
    factor = residual / (1.0 - residual) if residual else 0.0
    scratch = Scratch()  # the products' temporaries, reused slice after slice
    for k in range(1, iterations + 1):
        y = np.zeros_like(x)
        for lo in range(0, dim, SLICE_COLUMNS):
            y[where, lo:lo + SLICE_COLUMNS] += block_product(plan, x[where, lo:lo + SLICE_COLUMNS], pre, post,
                                                             scratch=scratch)
        if factor:
            y += factor * x
        normalize_rows(y)
        x[~known] = y[~known]
        made[(made == 0) & ~known & np.any(y != 0, axis=1)] = k
    return made


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
    report: dict[str, Any] = {"iterations": iterations, "markov": cfg.markov, "residual": cfg.residual, "dim": dim}
    with job_description(spark, "spark_cleora fold-in: read new events"):
        if cfg.input_format == "cleora-tsv":
            raw, rej = cleora_text_to_memberships(source, cfg)
            validation, units = None, rej.accepted_units
        else:
            raw, validation = events_to_memberships(source, cfg)
            # (to choose the engine and size the blocks) local Parquet: from the footers, without a Spark job
            units = parquet_footer_rows(cfg.inputs) if cfg.input_format == "parquet" and cfg.inputs else None
            if units is None and (cfg.engine == "auto" or (cfg.engine == "shuffle" and not cfg.num_blocks)):
                units = source.count()
        if units == 0:
            raise BadInputError("fold-in: the new events are empty (no rows were read)")
    memory_gb = cfg.block_memory_gb or worker_memory_gb(spark)
    engine = cfg.engine
    if engine == "auto":  # (an upper bound from the input rows: the graph is not built yet)
        engine = "one-task" if one_pass_bytes(units, dim) <= memory_gb * 2**30 else "shuffle"
    report["engine"] = engine
    if engine == "one-task":
        with job_description(spark, f"spark_cleora fold-in: graph, known neighbours, iterations 1-{iterations} "
                                    "in one task"):
            done = _checkpoint(fold_in_one_pass(raw, known, columns=columns, markov=cfg.markov, dim=dim,
                                                iterations=iterations, residual=cfg.residual))
            task = json.loads(done.filter(F.col("entity").isNull()).select("_report").first()["_report"])
        if "known_dim" in task:
            _wrong_dim(task["known_dim"], dim)
        inputs: dict[str | None, int] = {}
        for rule, n in task.pop("input_rows"):
            inputs[rule] = inputs.get(rule, 0) + int(n)
        if validation is not None:
            rej = validation.settle(inputs, units=inputs.get(None, 0))
        report.update(input_rows=rej.input_rows, rejected=rej.counts, num_blocks=1, **task)
        report["folded_in"] = sum(task["folded_in_per_iteration"].values())
        out = done.filter(F.col("entity").isNotNull()).drop("_report")
    else:
        out = _fold_in_shuffle(spark, raw, known, cfg, validation, rej if validation is None else None, units,
                               iterations=iterations, report=report, t0=t0)
    if report["unreached"]:
        log.warning("fold-in: %d new entities have no known entity within %d hyperedge(s) and get no vector "
                    "(e.g. %s)", report["unreached"], iterations, ", ".join(report["unreached_sample"]))
    if include_known:
        base = known.select("entity", "column", F.col("degree").cast("double").alias("degree"),
                            F.col("occurrences").cast("double").alias("occurrences"),
                            F.col("embedding").cast("array<float>").alias("embedding"),
                            F.lit(None).cast("int").alias(ITERATION_COLUMN))
        out = base.unionByName(out)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return FoldInResult(out, report)


def _fold_in_shuffle(spark: SparkSession, raw: DataFrame, known: DataFrame, cfg: EmbedConfig, validation: Any,
                     rej: Any, units: int | None, *, iterations: int, report: dict[str, Any], t0: float) -> DataFrame:
    """The fold-in with the shuffle engine (new events too large for one task): the new events' blocks
    and plans, the known rows of their entities joined in, one :func:`spark_cleora.engine.propagate.propagate`
    per iteration. Returns the new rows; fills ``report``."""
    dim, columns = cfg.dim, cfg.column_spec
    first = known.select(F.size("embedding").alias("d")).first()  # one row: the known table's dimension
    if first is None or first["d"] != dim:
        _wrong_dim(None if first is None else first["d"], dim)
    reflexive = len(columns) == 1
    num_blocks = cfg.num_blocks or blocks_for(units, dim=dim, block_memberships=cfg.block_memberships,
                                              memory_gb=cfg.block_memory_gb or worker_memory_gb(spark),
                                              parallelism=shuffle_partitions(spark))
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
    groups = block_groups(counts, num_blocks, entities=None, dim=dim,
                          memory_gb=cfg.block_memory_gb or worker_memory_gb(spark),
                          parallelism=group_parallelism(spark),
                          two_sided=not reflexive)
    report["block_groups"] = groups.count
    report["seconds_to_start"] = round(time.perf_counter() - t0, 3)
    report["iteration_seconds"] = []
    for k in range(1, iterations + 1):
        t_it = time.perf_counter()
        with job_description(spark, f"spark_cleora fold-in: iteration {k}/{iterations}"):
            x = fixed.unionByName(new.select(*X_SCHEMA_COLUMNS))
            nxt = _reached(propagate(x, plans, dim=dim, num_blocks=num_blocks, residual=cfg.residual, groups=groups),
                           dim=dim)
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
    got = new.filter(F.col(ITERATION_COLUMN).isNotNull())
    return unpacked(got.select("id", "vec"), dim=dim).join(got.drop("vec"), "id").select(
        "entity", "column", F.col("degree").cast("double").alias("degree"),
        F.col("occurrences").cast("double").alias("occurrences"), F.col("vec").alias("embedding"),
        F.col(ITERATION_COLUMN).cast("int").alias(ITERATION_COLUMN))
