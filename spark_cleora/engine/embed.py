"""The Cleora embedding pipeline: input -> hyperedges -> graph -> start vectors -> iterations."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import xxhash
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StructField, StructType

from ..config import EmbedConfig, field_names
from ..errors import BadInputError, ConfigError
from .._version import __version__
from .graph import (
    ENTITIES_RSD,
    WRITTEN,
    GraphCounts,
    block_groups,
    blocks_for,
    build_blocks,
    build_blocks_in_tasks,
    build_entities,
    check_hyperedge_fits,
    count_entities,
    counts_of_rows,
    estimate_entities,
    graph_count_metrics,
    graph_counts,
    observed_counts,
    plans_of,
)
from .hyperedges import Rejections, cleora_text_to_memberships, constant_columns, events_to_memberships
from .start_vectors import given_start_vectors, init_for_names, override_start_vectors, read_start_vectors
from ..storage.paths import local_path, parquet_footer_rows
from ..storage.task_parquet import (TaskParquetTarget, check_task_files, check_task_parquet, readable_by_task,
                                    spark_parquet_codec, workers_share_local_files)
from .one_task import (
    embed_events_in_one_task,
    embed_in_one_task,
    one_task_bytes,
    slice_choices,
    small_input_rows,
    worker_threads,
)
from ..runtime.machine import group_parallelism, one_task_memory_gb, shuffle_partitions, worker_memory_gb
from .propagate import X_SCHEMA_COLUMNS, BlockGroups, propagate, route_scalings, unpacked
from ..runtime.compat import observes_writes
from ..runtime.session import job_description, narrow_row_batches, warm_remaining_workers
from .work_store import WorkStore
from .vectors import pack
from .whiten import whiten

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class GraphReport:
    """Stage 1, the graph: the input rows read and rejected (per rule), the graph's size and blocks."""

    input_rows: int
    rejected: dict[str, int]
    hyperedges: int
    memberships: int
    num_blocks: int


@dataclass(frozen=True)
class EngineReport:
    """Stage 2, the engine: which one runs the iterations, the one-task memory estimate, the resume point."""

    engine: str
    one_task: dict[str, Any]  # estimated_bytes, threads, memory_gb, slice_columns
    resumed_from_iteration: int | None


@dataclass(frozen=True)
class IterationsReport:
    """Stage 3, the iterations: entities embedded, each iteration's seconds, the start vectors given."""

    entities: int | None
    iteration_seconds: list[float]
    seconds_to_embed: float
    init_vectors: dict[str, int] | None = None
    one_task_reported: dict[str, float] = field(default_factory=dict)  # the task's read/prepare seconds, slice width
    block_groups: int | None = None  # shuffle engine: the multiply tasks of an iteration (groups of blocks)


@dataclass(frozen=True)
class RunReport:
    """What a run did, stage by stage; :meth:`to_dict` is the flat report of ``_run.json``."""

    environment: dict[str, Any]  # versions and the config
    graph: GraphReport
    engine: EngineReport
    iterations: IterationsReport | None  # None while a single-pass one-task run has not run yet

    def to_dict(self) -> dict[str, Any]:
        out = {**self.environment, **dataclasses.asdict(self.graph)}
        out.update(one_task=dict(self.engine.one_task), engine=self.engine.engine,
                   resumed_from_iteration=self.engine.resumed_from_iteration)
        it = self.iterations
        if it is not None:
            if it.init_vectors is not None:
                out["init_vectors"] = it.init_vectors
            out["one_task"].update(it.one_task_reported)
            out.update(entities=it.entities, iteration_seconds=it.iteration_seconds,
                       seconds_to_embed=it.seconds_to_embed)
            if it.block_groups is not None:
                out["block_groups"] = it.block_groups
        return out


@dataclass(frozen=True)
class EmbedResult:
    """The embeddings (lazy, read from the work store) and what the run did.

    With ``run_embedding(..., single_pass=True)`` and the one-task engine, ``embeddings`` is the
    computation itself: run it with exactly one action (the output write), then :meth:`finish` gives the
    report with what the task reported (entities, per-iteration seconds).
    """

    embeddings: DataFrame
    run: RunReport
    pending: Callable[[], RunReport] | None = None  # single pass: the run's report once the action ran
    #: single pass on the one-task engine: the one action done by the task, which writes the output as
    #: Parquet itself (see :mod:`spark_cleora.storage.task_parquet`); returns the rows written. Use it
    #: instead of an action on ``embeddings`` when the output allows (``task_parquet_target``).
    write_parquet: Callable[[TaskParquetTarget], int] | None = None

    @property
    def report(self) -> dict[str, Any]:
        """The flat report (:meth:`RunReport.to_dict`); without the iterations while the run is pending."""
        return self.run.to_dict()

    def finish(self) -> dict[str, Any]:
        """The whole report: for a single-pass run, call it after the one action on ``embeddings``."""
        return (self.run if self.pending is None else self.pending()).to_dict()


#: bytes read at a time when checksumming a local input (the file is streamed, never held)
_CHUNK = 1 << 20


def file_checksum(path: str) -> str:
    """xxh3-128 of a file's content, read in chunks."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _input_fingerprint(paths: tuple[str, ...] | list[str], spark: SparkSession | None = None) -> list[Any]:
    """What identifies the input's content, per path: for local files each file's relative name, size and
    content checksum (so a rewrite that keeps the size and mtime, as ``cp -p`` and ``rsync -t`` do, is
    seen); for other stores what their listing gives (:func:`_listing_fingerprint`); a path that does not
    exist locally and cannot be listed (a catalog table name) as given."""
    out: list[Any] = []
    for p in paths:
        lp = local_path(p)
        if lp is None or not os.path.exists(lp):
            out.append(_listing_fingerprint(spark, p) if lp is None and spark is not None else p)
            continue
        files = [lp] if os.path.isfile(lp) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(lp) for f in fs if not f.startswith((".", "_"))
        )
        out.append([p, [[os.path.relpath(f, lp), os.path.getsize(f), file_checksum(f)] for f in files]])
    return out


def _listing_fingerprint(spark: SparkSession, path: str) -> list[Any]:
    """A remote path's files as the store lists them: count and an order-free hash (XOR of xxhash64) of
    each file's path, size and modification time, computed by Spark's ``binaryFile`` source without reading
    the content (Connect-safe: no JVM calls; one small row reaches the driver). An object store sets the
    modification time on every write, so a rewritten object is seen; ETags and version ids are not
    reachable without the JVM."""
    try:
        row = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(path)
               .agg(F.count(F.lit(1)).alias("n"),
                    F.bit_xor(F.xxhash64("path", "length", "modificationTime")).alias("h")).collect()[0])
    except Exception:  # not listable here: the reader reports it; the path alone identifies the input
        log.debug("listing %s for the resume fingerprint failed", path, exc_info=True)
        return [path]
    return [path, int(row["n"]), None if row["h"] is None else int(row["h"])]


def fingerprint(cfg: EmbedConfig, input_id: Any = None, spark: SparkSession | None = None) -> dict[str, Any]:
    """Everything a resumed run must share with the run that wrote the work directory: the options that
    change the numbers (:meth:`EmbedConfig.fingerprint_fields`) and the identity of the inputs."""
    fp = cfg.fingerprint_fields()
    fp["input_files"] = _input_fingerprint(cfg.inputs, spark) if input_id is None else input_id
    if cfg.init_vectors:  # a rewritten --init-vectors table changes iteration 0: not resumable
        fp["init_vectors_files"] = _input_fingerprint([cfg.init_vectors], spark)
    return fp


class _Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        t = time.perf_counter()
        dt, self.t0 = t - self.t0, t
        return dt


class _Work:
    """Where a run's stages are written: the work store (resumable), or ``localCheckpoint`` without one."""

    def __init__(self, store: WorkStore | None, manifest: dict[str, Any]) -> None:
        self.store, self.manifest = store, manifest

    def checkpoint(self, df: DataFrame, name: str) -> DataFrame:
        """Cut the lineage: write to the store (overwriting), or localCheckpoint without one."""
        return df.localCheckpoint(eager=True) if self.store is None else self.store.write(df, name)

    def materialise(self, df: DataFrame, name: str) -> DataFrame:
        """Like ``checkpoint``, but reuse ``name`` when a previous run of this config finished it."""
        if self.store is not None and self.store.is_complete(name):
            log.info("reusing %s from %s", name, self.store.uri)
            return self.store.read(name)
        return self.checkpoint(df, name)

    def remember(self, *, replace: bool = False, **graph: Any) -> None:
        """Add to (or ``replace``) the manifest's ``graph`` entry: what a resumed run reuses."""
        if self.store is not None:
            self.manifest["graph"] = {**({} if replace else self.manifest.get("graph", {})), **graph}
            self.store.save_manifest(self.manifest)


@dataclass(frozen=True)
class _Graph:
    """Stage 1's result: the graph's blocks (written), their counts and propagation plans."""

    blocks: DataFrame
    counts: GraphCounts
    plans: DataFrame
    num_blocks: int
    memory_gb: float  # a Python worker's budget


class _Entities:
    """``graph/entities``, made once on demand (the one-task engine sums the entities itself)."""

    def __init__(self, spark: SparkSession, cfg: EmbedConfig, graph: _Graph, work: _Work, timer: _Timer) -> None:
        self.spark, self.cfg, self.graph, self.work, self.timer = spark, cfg, graph, work, timer
        self.table: DataFrame | None = None
        self.count: int | None = None

    def get(self, with_vectors: bool) -> DataFrame:
        if self.table is None:
            with job_description(self.spark, "spark_cleora: entities"):
                ent = build_entities(self.graph.blocks, self.cfg.column_spec)
                if with_vectors:  # the start vectors are a function of the name: made in the same pass
                    ent = with_start_vectors(ent, self.cfg)
                self.table = self.work.materialise(ent, "graph/entities")
                self.count = count_entities(self.table)
            self.work.remember(entities=self.count)
            log.info("%d entities (%.1fs)", self.count, self.timer.lap())
        return self.table


def run_embedding(
    spark: SparkSession,
    cfg: EmbedConfig,
    source: DataFrame,
    *,
    store: WorkStore | None,
    input_id: Any = None,
    single_pass: bool = False,
) -> EmbedResult:
    """Embed ``source`` (events, or Cleora text lines in ``value``) as ``cfg`` says.

    With a ``store`` every stage is written to it (and resumed from it); without, lineage is cut with
    ``localCheckpoint`` (nothing on disk, nothing to resume). ``single_pass``: the caller runs one action
    on the embeddings (the batch job's write), so the one-task engine's result is not checkpointed
    first; see :class:`EmbedResult`.

    The stages: :func:`_prepare_graph` -> :func:`_choose_engine_stage` -> :func:`_iterate_one_task` or
    :func:`_iterate_shuffle` -> :func:`_assemble`, each returning its part of the :class:`RunReport`.
    """
    t_all = time.perf_counter()
    timer = _Timer()
    environment = {"spark_cleora_version": __version__, "spark_version": spark.version,
                   "python": platform.python_version(), "config": cfg.to_dict()}
    manifest: dict[str, Any] = {"version": __version__}
    if store is not None:  # (the fingerprint reads every local input once: only when there is a store)
        manifest = store.check_or_write_manifest({**manifest, "fingerprint": fingerprint(cfg, input_id, spark)})
    work = _Work(store, manifest)
    # --init-vectors: checked before anything expensive runs
    given_table = read_start_vectors(spark.read.parquet(cfg.init_vectors), dim=cfg.dim) if cfg.init_vectors else None

    units = None  # (rows, from the footers): counted once, here or in the graph stage
    if single_pass and given_table is None and _small_input_possible(spark, cfg, work):
        units = _event_rows(spark, cfg, source)
        small = _small_input_engine(spark, cfg, units[0])
        if small is not None:
            return _embed_small_input(spark, cfg, source, environment, small, rows=units, t_all=t_all,
                                      timer=timer)
    warm_remaining_workers(spark)  # the graph build runs Python tasks on every core
    graph, graph_report = _prepare_graph(spark, cfg, source, work, timer, units=units)
    entities = _Entities(spark, cfg, graph, work, timer)
    engine_report = _choose_engine_stage(spark, cfg, graph, work)
    run = RunReport(environment, graph_report, engine_report, None)
    start = engine_report.resumed_from_iteration or 0
    if engine_report.engine == "one-task":
        done, finish = _iterate_one_task(spark, cfg, graph, work, entities, given_table, start=start,
                                         threads=engine_report.one_task["threads"],
                                         slice_columns=engine_report.one_task["slice_columns"], t_all=t_all,
                                         timer=timer)
        if single_pass:  # the task's report is observed during the caller's one action
            observed = Observation("spark_cleora_one_task")
            emb = done(None).observe(observed, F.max("_report").alias("report")).drop("_report")
            by_task: dict[str, Any] = {}

            def pending() -> RunReport:
                got = by_task.get("report") or observed.get.get("report")  # None only if the task wrote no row
                task = json.loads(got) if got else {"entities": None, "iteration_seconds": []}
                return dataclasses.replace(run, iterations=finish(task))

            return EmbedResult(emb, run, pending=pending, write_parquet=_written_by_task(done, by_task))
        with job_description(spark, f"spark_cleora: iterations {start + 1}-{cfg.iterations} in one task"):
            done = work.materialise(done(None), "one-task")
            task = json.loads(done.filter(F.col("_report").isNotNull()).select("_report").first()["_report"])
        return EmbedResult(done.drop("_report"), dataclasses.replace(run, iterations=finish(task)))
    x, parts, init_report, iteration_seconds, groups = _iterate_shuffle(
        spark, cfg, graph, work, entities, given_table, start=start, t_all=t_all, timer=timer)
    emb = _assemble(cfg, x, parts, entities.table)
    iterations = IterationsReport(entities.count, iteration_seconds, round(time.perf_counter() - t_all, 3),
                                  init_vectors=init_report, block_groups=groups)
    return EmbedResult(emb, dataclasses.replace(run, iterations=iterations))


def _event_rows(spark: SparkSession, cfg: EmbedConfig, source: DataFrame) -> tuple[int, bool]:
    """(input rows of an event table, whether the local Parquet footers gave them); the rows size the
    graph's blocks and decide the small-input path."""
    # local Parquet: the footers, read here; else a Spark count (Parquet/Delta: also footers)
    units = parquet_footer_rows(cfg.inputs) if cfg.input_format == "parquet" else None
    if units is not None:
        return units, True
    with job_description(spark, "spark_cleora: count input rows"):
        return source.count(), False


def _check_input_rows(spark: SparkSession, source: DataFrame, seen: int, units: int, from_footers: bool) -> None:
    """Every input row is either in the graph or counted as rejected: ``seen`` (the graph build's total)
    must be the input's row count, recounted by Spark when it came from a footer walk that disagrees."""
    if seen != units and from_footers:  # a file layout the footer walk misread?
        with job_description(spark, "spark_cleora: count input rows"):
            log.warning("the Parquet footers say %d rows; counting with Spark", units)
            units = source.count()
    if seen != units:
        raise RuntimeError(f"the graph build saw {seen} input rows, the input has {units}")


def _small_input_possible(spark: SparkSession, cfg: EmbedConfig, work: _Work) -> bool:
    """Whether the run may go to one task, graph included (:func:`_small_input_engine`), before the rows
    are counted: an event table, the engine not ``shuffle``, the blocks not sized by hand, the work
    directory not kept (``--keep-work``, ``--checkpoint-dir``: its graph is wanted on disk), the path not
    turned off (``spark.cleora.oneTask.smallInputRows=0``), an output staged locally
    (:func:`_staged_locally`), a session whose write observations come back (the task's report), and
    no graph of an earlier run to resume from."""
    return (cfg.input_format != "cleora-tsv" and cfg.engine != "shuffle" and not cfg.num_blocks
            and not cfg.block_memberships and not cfg.keep_work and small_input_rows(spark) > 0
            and _staged_locally(cfg) and observes_writes(spark)
            and not (work.store is not None and work.store.is_complete("graph/blocks")))


def _staged_locally(cfg: EmbedConfig) -> bool:
    """The output is written to a local staging directory and renamed into place afterwards (Parquet,
    npy, Cleora text at a local path): the input rules, settled once the one task has counted them, can
    still refuse it. A Delta commit, a table swap or a non-local path would already be published."""
    return bool(cfg.output and not cfg.output_table and cfg.output_format != "delta"
                and local_path(cfg.output) is not None)


def _small_input_engine(spark: SparkSession, cfg: EmbedConfig, units: int) -> dict[str, Any] | None:
    """The one-task estimate when the whole run, graph included, goes to one task (see
    :func:`~spark_cleora.engine.one_task.embed_events_in_one_task`), else None: for at most
    ``spark.cleora.oneTask.smallInputRows`` input rows that the one task's budget holds with every bound
    at its worst (as many entities, hyperedges and memberships as rows)."""
    if not 0 < units <= small_input_rows(spark):
        return None
    threads = worker_threads(spark)
    memory_gb = cfg.block_memory_gb or one_task_memory_gb(spark)
    need = one_task_bytes(entities=units, dim=cfg.dim, kept=max(1, len(cfg.multiscale)), memberships=units,
                          hyperedges=units, shares=units, threads=threads, reflexive=True,
                          residual=bool(cfg.residual), whiten=cfg.whiten != "none", slice_columns=cfg.dim)
    if need > memory_gb * 2**30:
        return None
    return {"estimated_bytes": int(need), "threads": threads, "memory_gb": memory_gb, "slice_columns": cfg.dim,
            "graph_in_task": True}


def _embed_small_input(spark: SparkSession, cfg: EmbedConfig, source: DataFrame, environment: dict[str, Any],
                       estimate: dict[str, Any], *, rows: tuple[int, bool], t_all: float, timer: _Timer
                       ) -> EmbedResult:
    """A small event table in one Spark job: the graph, the iterations and the output rows in one task.

    Nothing is written to the work store (a failed run starts again; it takes seconds). The input's
    rules are settled once the task has counted them, before the output is published: a rejected
    row under ``--on-bad-rows fail`` fails the run (exit 3) and the output is not written."""
    units, from_footers = rows
    raw, validation = events_to_memberships(source, cfg)
    log.info("engine one-task, graph built in the task (%d input rows <= %d; one-task would need at most "
             "~%.2f GiB of its %g GiB budget)", units, small_input_rows(spark), estimate["estimated_bytes"] / 2**30,
             estimate["memory_gb"])

    def done(parquet: TaskParquetTarget | None) -> DataFrame:
        return embed_events_in_one_task(
            raw, columns=cfg.column_spec, dim=cfg.dim, markov=cfg.markov, init=cfg.init, seed=cfg.seed,
            last=cfg.iterations, multiscale=cfg.multiscale, whiten=cfg.whiten, residual=cfg.residual,
            threads=estimate["threads"], slice_columns=estimate["slice_columns"], parquet=parquet,
            constant=constant_columns(cfg))

    observed = Observation("spark_cleora_one_task")
    emb = done(None).observe(observed, F.max("_report").alias("report")).filter(
        F.col("entity").isNotNull()).drop("_report")
    by_task: dict[str, Any] = {}
    engine = EngineReport(engine="one-task", one_task=estimate, resumed_from_iteration=None)
    # provisional until the task has run (then pending() has the counts)
    run = RunReport(environment, GraphReport(input_rows=units, rejected={}, hyperedges=0, memberships=0, num_blocks=1),
                    engine, None)

    def pending() -> RunReport:
        got = by_task.get("report") or observed.get.get("report")  # always a row: a missing report is a bug
        if got is None:
            raise RuntimeError("the one task's report did not come back with the output write")
        task = json.loads(got)
        g = task["graph"]
        rej = validation.settle({rule: n for rule, n in g["input_rows"]},
                                units=sum(n for rule, n in g["input_rows"] if rule is None))
        _check_input_rows(spark, source, rej.input_rows, units, from_footers)
        log.info("read %d input rows (%d rejected)", rej.input_rows, rej.total)
        if rej.accepted_units == 0:
            raise BadInputError("no input rows left after validation")
        log.info("graph: %d hyperedges, %d memberships, 1 block, built in the task in %.1fs", g["hyperedges"],
                 g["memberships"], g["build_seconds"])
        log.info("%s entities, iterations 1-%d in one task: %s s (%.1fs with the graph, reading and writing)",
                 task["entities"], cfg.iterations, task["iteration_seconds"], timer.lap())
        graph = GraphReport(input_rows=rej.input_rows, rejected=rej.counts, hyperedges=g["hyperedges"],
                            memberships=g["memberships"], num_blocks=1)
        iterations = IterationsReport(
            entities=task["entities"], iteration_seconds=task["iteration_seconds"],
            seconds_to_embed=round(time.perf_counter() - t_all, 3),
            one_task_reported={"graph_seconds": g["build_seconds"],
                               **{k: task[k] for k in ("prepare_seconds", "slice_columns", "write_seconds")
                                  if k in task}})
        return RunReport(environment, graph, engine, iterations)

    return EmbedResult(emb, run, pending=pending, write_parquet=_written_by_task(done, by_task, narrow_rows=True))


def _prepare_graph(spark: SparkSession, cfg: EmbedConfig, source: DataFrame, work: _Work, timer: _Timer,
                   units: tuple[int, bool] | None = None) -> tuple[_Graph, GraphReport]:
    """Stage 1: hyperedges and the graph's blocks, written to the work store (or reused from it).
    ``units``: the event table's rows, if already counted (:func:`_event_rows`)."""
    store = work.store
    memory_gb = cfg.block_memory_gb or worker_memory_gb(spark)  # a Python worker's budget
    g = work.manifest.get("graph", {})
    if store is not None and "shares" in g and store.is_complete("graph/blocks"):
        blocks = store.read("graph/blocks")
        counts = GraphCounts(g["memberships"], g["hyperedges"], g["largest"], g["shares"], {},
                             tuple(tuple(b) for b in g.get("block_sizes", ())))
        rej = Rejections(counts=g["rejected"], input_rows=g["input_rows"])
        num_blocks = g["num_blocks"]
        log.info("resuming with the prepared graph in %s", store.uri)
    else:
        validation, constant = None, ()
        if cfg.input_format == "cleora-tsv":
            with job_description(spark, "spark_cleora: validate input"):
                raw, rej = cleora_text_to_memberships(source, cfg)  # counted up front (sizes the blocks)
            units = rej.accepted_units
            log.info("read %d input rows (%d rejected) in %.1fs", rej.input_rows, rej.total, timer.lap())
            if units == 0:
                raise BadInputError("no input rows left after validation")
        else:  # events: the rules are counted inside the graph build (no pass of their own)
            raw, validation = events_to_memberships(source, cfg)
            constant = constant_columns(cfg)
            units, from_footers = units or _event_rows(spark, cfg, source)
            if units == 0:
                raise BadInputError("events: the input is empty (no rows were read)")
        num_blocks = cfg.num_blocks or blocks_for(units, dim=cfg.dim, block_memberships=cfg.block_memberships,
                                                  memory_gb=memory_gb, parallelism=shuffle_partitions(spark))
        reflexive, codec = len(cfg.column_spec) == 1, spark_parquet_codec(spark)
        with job_description(spark, "spark_cleora: build graph"), narrow_row_batches(spark):
            if store is not None and store.local is not None and codec is not None and workers_share_local_files(spark):
                # the tasks write the blocks themselves; the job returns the counts' rows and the files'
                target = TaskParquetTarget(os.path.abspath(store.task_directory("graph/blocks")), codec)
                rows = [r.asDict() for r in build_blocks_in_tasks(raw, reflexive=reflexive, num_blocks=num_blocks,
                                                                  target=target, constant=constant).collect()]
                check_task_files(target.directory, {r["entity"]: r["rows"] for r in rows if r["kind"] == WRITTEN})
                store.mark_complete("graph/blocks")
                blocks = store.read("graph/blocks")
                counts = counts_of_rows(rows)
            else:
                built = build_blocks(raw, reflexive=reflexive, num_blocks=num_blocks, constant=constant)
                if store is not None and not store.is_complete("graph/blocks"):
                    # the counts are observed while the blocks are written: no job of their own
                    observed = Observation()
                    blocks = store.write(built.observe(observed, *graph_count_metrics()), "graph/blocks")
                    counts = observed_counts(observed.get)
                else:
                    blocks = work.materialise(built, "graph/blocks")
                    counts = graph_counts(blocks)
        if validation is not None:
            rej = validation.settle(counts.input_rows, units=counts.input_rows.get(None, 0))
            _check_input_rows(spark, source, rej.input_rows, units, from_footers)
            log.info("read %d input rows (%d rejected)", rej.input_rows, rej.total)
            if rej.accepted_units == 0:
                raise BadInputError("no input rows left after validation")
        work.remember(replace=True, memberships=counts.memberships, hyperedges=counts.hyperedges, largest=counts.largest,
                      shares=counts.shares, num_blocks=num_blocks, rejected=rej.counts, input_rows=rej.input_rows,
                      block_sizes=[list(b) for b in counts.blocks])
        log.info("graph: %d hyperedges, %d memberships, %d blocks (%.1fs)", counts.hyperedges, counts.memberships,
                 num_blocks, timer.lap())
    check_hyperedge_fits(counts.largest, cfg.dim, memory_gb)
    report = GraphReport(input_rows=rej.input_rows, rejected=rej.counts, hyperedges=counts.hyperedges,
                         memberships=counts.memberships, num_blocks=num_blocks)
    return _Graph(blocks, counts, plans_of(blocks), num_blocks, memory_gb), report


def _choose_engine_stage(spark: SparkSession, cfg: EmbedConfig, graph: _Graph, work: _Work) -> EngineReport:
    """Stage 2: the engine, and the iteration a resumed run starts after."""
    store = work.store
    start = (store.last_iteration(cfg.iterations) if store is not None else None) or 0
    estimate: dict[str, Any] = {}
    engine = choose_engine(spark, cfg, graph.counts, work.manifest.get("graph", {}).get("entities"), estimate,
                           blocks=graph.blocks)
    if engine == "one-task" and any(s <= start for s in cfg.multiscale):
        engine = "shuffle"  # the resumed run's earlier --multiscale parts are in the store, not in the task
    return EngineReport(engine=engine, one_task=estimate["one_task"], resumed_from_iteration=start or None)


def _iterate_one_task(spark: SparkSession, cfg: EmbedConfig, graph: _Graph, work: _Work, entities: _Entities,
                      given_table: tuple[DataFrame, int] | None, *, start: int, threads: int, slice_columns: int,
                      t_all: float, timer: _Timer
                      ) -> tuple[Callable[[TaskParquetTarget | None], DataFrame], Callable[[dict[str, Any]], IterationsReport]]:
    """Stage 3 on the one-task engine: the computation (rows plus the task's JSON report in ``_report``;
    given a Parquet target, the task writes the rows there and returns the report alone) and the
    function that turns the task's report into the :class:`IterationsReport`."""
    start_vectors = None
    init_report = None
    if start > 0:
        log.info("resuming from iteration %d", start)
        start_vectors = work.store.read(work.store.iteration_name(start)).select("id", "vec")
    elif given_table is not None:  # node features replace the hash init where given
        given, init_report = given_start_vectors(*given_table, entities.get(False), dim=cfg.dim)
        start_vectors = given.select("id", F.col("given").alias("vec"))
    # the blocks on this machine's disk, complete, in a codec pyarrow reads: the task reads them itself
    blocks_dir = (os.path.join(work.store.local, "graph/blocks") if start_vectors is None and work.store is not None
                  and work.store.local and work.store.is_complete("graph/blocks")
                  and workers_share_local_files(spark) else None)
    if blocks_dir is not None and not readable_by_task(blocks_dir):
        blocks_dir = None

    def done(parquet: TaskParquetTarget | None) -> DataFrame:
        return embed_in_one_task(
            graph.blocks, columns=cfg.column_spec, dim=cfg.dim, markov=cfg.markov, init=cfg.init, seed=cfg.seed,
            first=start + 1, last=cfg.iterations, multiscale=cfg.multiscale, whiten=cfg.whiten,
            residual=cfg.residual, start_vectors=start_vectors, threads=threads, slice_columns=slice_columns,
            parquet=parquet, blocks_dir=blocks_dir)

    def finish(task: dict[str, Any]) -> IterationsReport:
        log.info("%s entities, iterations %d-%d in one task: %s s (%.1fs with reading and writing)",
                 task["entities"], start + 1, cfg.iterations, task["iteration_seconds"], timer.lap())
        return IterationsReport(
            entities=task["entities"], iteration_seconds=task["iteration_seconds"],
            seconds_to_embed=round(time.perf_counter() - t_all, 3), init_vectors=init_report,
            one_task_reported={"blocks_read_by_task": blocks_dir is not None,
                               **{k: task[k] for k in ("read_seconds", "prepare_seconds", "slice_columns",
                                                       "write_seconds") if k in task}})

    return done, finish


def _written_by_task(make: Callable[[TaskParquetTarget | None], DataFrame], by_task: dict[str, Any], *,
                     narrow_rows: bool = False) -> Callable[[TaskParquetTarget], int]:
    """:attr:`EmbedResult.write_parquet` for the one-task computation ``make``: run it with the task
    writing the Parquet file, keep its report in ``by_task["report"]`` (for ``pending``), return the rows
    written. ``narrow_rows``: the task reads the input's memberships (:func:`narrow_row_batches`)."""

    def write(target: TaskParquetTarget) -> int:
        df = make(target).filter(F.col("_report").isNotNull()).select("_report")
        with narrow_row_batches(df.sparkSession) if narrow_rows else contextlib.nullcontext():
            rows = df.collect()  # one row
        if len(rows) != 1:
            raise RuntimeError(f"the one task returned {len(rows)} reports instead of one")
        by_task["report"] = rows[0]["_report"]
        task = json.loads(by_task["report"])
        if "written" not in task:  # every input row rejected: no file (pending() then fails the run)
            return 0
        check_task_parquet(target, int(task["written"]))
        return int(task["written"])

    return write


def _iterate_shuffle(spark: SparkSession, cfg: EmbedConfig, graph: _Graph, work: _Work, entities: _Entities,
                     given_table: tuple[DataFrame, int] | None, *, start: int, t_all: float, timer: _Timer
                     ) -> tuple[DataFrame, dict[int, DataFrame], dict[str, int] | None, list[float], int]:
    """Stage 3 on the shuffle engine: start vectors, then one distributed propagation per iteration.

    Returns the last iteration's vectors, the ``--multiscale`` iterations kept, the ``--init-vectors``
    report, each iteration's seconds and the number of block groups an iteration multiplies.
    """
    store = work.store
    init_report = None
    if start > 0:
        log.info("resuming from iteration %d", start)
        entities.get(given_table is None)
        x = store.read(store.iteration_name(start)).select(*X_SCHEMA_COLUMNS)
    elif given_table is None:  # made with the entities (see with_start_vectors)
        x = entities.get(True).select(*X_SCHEMA_COLUMNS)
    else:
        ent = entities.get(False)
        with job_description(spark, "spark_cleora: start vectors"):
            init = with_start_vectors(ent, cfg).select(*X_SCHEMA_COLUMNS)
            given, init_report = given_start_vectors(*given_table, ent, dim=cfg.dim)
            x = work.materialise(override_start_vectors(init, given), "iter=0000")
        log.info("start vectors (%s, seed %d, dim %d) in %.1fs", cfg.init, cfg.seed, cfg.dim, timer.lap())
    groups = _block_groups(spark, cfg, graph, entities.count)
    log.info("iterations: %d blocks multiplied in %d tasks", graph.num_blocks, groups.count)
    iteration_seconds: list[float] = []
    # --multiscale: the iterations to concatenate (kept in the store; earlier ones re-read on resume)
    parts = {s: store.read(store.iteration_name(s)).select(*X_SCHEMA_COLUMNS)
             for s in cfg.multiscale if s <= start and store is not None}
    for k in range(start + 1, cfg.iterations + 1):
        with job_description(spark, f"spark_cleora: iteration {k}/{cfg.iterations}"):
            nxt = propagate(x, graph.plans, dim=cfg.dim, num_blocks=graph.num_blocks, residual=cfg.residual,
                            groups=groups)
            if cfg.whiten == "every" or (cfg.whiten == "final" and k == cfg.iterations):
                # pycleora 3.2.1 whitens after every iteration, 3.0/3.2.0 once at the end
                nxt = whiten(work.checkpoint(nxt, "whiten-input"), dim=cfg.dim)
            x = work.checkpoint(nxt, store.iteration_name(k) if store else "")
            if k in cfg.multiscale:
                parts[k] = x
            if store is not None and k - 1 > 0 and not cfg.keep_work and k - 1 not in cfg.multiscale:
                store.drop_iteration(k - 1)  # only the last finished iteration is needed to resume
        dt = timer.lap()
        iteration_seconds.append(round(dt, 3))
        log.info("iteration %d/%d: %d rows in %.1fs (elapsed %.1fs)", k, cfg.iterations, entities.count, dt,
                 time.perf_counter() - t_all)
    return x, parts, init_report, iteration_seconds, groups.count


def _block_groups(spark: SparkSession, cfg: EmbedConfig, graph: _Graph, entities: int | None) -> BlockGroups:
    """The groups of blocks an iteration multiplies (:func:`~spark_cleora.engine.graph.block_groups`)."""
    return block_groups(graph.counts, graph.num_blocks, entities=entities, dim=cfg.dim, memory_gb=graph.memory_gb,
                        parallelism=group_parallelism(spark), two_sided=len(cfg.column_spec) != 1)


def _assemble(cfg: EmbedConfig, x: DataFrame, parts: dict[int, DataFrame], entities: DataFrame | None
              ) -> DataFrame:
    """Stage 4: the output rows (``entity``, ``column``, ``degree``, ``occurrences``, ``embedding``)."""
    if cfg.multiscale:
        x = _concatenate([whiten(parts[s], dim=cfg.dim) if cfg.whiten == "final" and s < cfg.iterations
                          else parts[s] for s in cfg.multiscale])
    return (
        unpacked(x, dim=cfg.output_dim)
        .join(entities.filter(F.col("output")).select("id", "entity", "column", "degree", "occurrences"), "id")
        .select("entity", "column", F.col("degree").cast("double").alias("degree"),
                F.col("occurrences").cast("double").alias("occurrences"), F.col("vec").alias("embedding"))
    )


def choose_engine(spark: SparkSession, cfg: EmbedConfig, counts: GraphCounts, n_entities: int | None,
                  report: dict[str, Any], *, blocks: DataFrame) -> str:
    """``cfg.engine``, with ``auto`` resolved: ``one-task`` when its estimated memory fits
    ``--block-memory-gb`` or, by default, :func:`~spark_cleora.runtime.machine.one_task_memory_gb` (the
    estimate goes into ``report``). Before the entities are summed their count is bounded by the
    blocks' entity counts (``counts.shares``); when that bound does not fit with the widest slices of
    the product, a HyperLogLog estimate (plus three standard deviations) of the distinct entities
    decides the engine and the slices' width (``report["one_task"]["slice_columns"]``)."""
    threads = worker_threads(spark)
    # the one task runs alone: beside an embedded local driver it may use what the workers would share
    memory_gb = cfg.block_memory_gb or one_task_memory_gb(spark)
    budget = memory_gb * 2**30

    def need(entities: int, slice_columns: int) -> int:
        return one_task_bytes(entities=entities, dim=cfg.dim, kept=max(1, len(cfg.multiscale)),
                              memberships=counts.memberships, hyperedges=counts.hyperedges, shares=counts.shares,
                              threads=threads, reflexive=len(cfg.column_spec) == 1, residual=bool(cfg.residual),
                              whiten=cfg.whiten != "none", slice_columns=slice_columns)

    def widest_fitting(entities: int) -> tuple[int, int]:
        """(slice columns, estimate): the widest slices that fit the budget, else the narrowest."""
        choices = slice_choices(cfg.dim)
        for width in choices:
            if need(entities, width) <= budget:
                return width, need(entities, width)
        return choices[-1], need(entities, choices[-1])

    width, estimate = widest_fitting(n_entities or counts.shares)
    engine = cfg.engine
    # the share rows bound the entities loosely (a popular entity has a share in every block): when the
    # widest slices do not fit that bound, the estimated count may still let them (or the engine) fit
    if engine != "shuffle" and width < cfg.dim and not n_entities:
        with job_description(spark, "spark_cleora: estimate entities"):
            width, estimate = widest_fitting(
                min(counts.shares, int(estimate_entities(blocks) * (1 + 3 * ENTITIES_RSD)) + 1))
    if engine == "auto":
        engine = "one-task" if estimate <= budget else "shuffle"
    report["one_task"] = {"estimated_bytes": int(estimate), "threads": threads, "memory_gb": memory_gb,
                          "slice_columns": width}
    log.info("engine %s (one-task would need ~%.2f GiB of its %g GiB budget, slices of %d columns)", engine,
             estimate / 2**30, memory_gb, width)
    return engine


def with_start_vectors(entities: DataFrame, cfg: EmbedConfig) -> DataFrame:
    """``entities`` plus the route scalings (``pre``, ``post``) and the hash start vector ``vec``: the
    entities table then doubles as iteration 0 (one job and one write fewer)."""
    ent = entities.select("*", *route_scalings(cfg.markov))
    schema = StructType([*ent.schema.fields, StructField("vec", BinaryType())])  # (schema.add mutates)

    def add_vectors(batches):
        for b in batches:
            vecs = init_for_names(b.column("entity").to_pylist(), cfg.dim, seed=cfg.seed, method=cfg.init)
            yield pa.RecordBatch.from_arrays([*b.columns, pack(vecs)], names=[*b.schema.names, "vec"])

    return ent.mapInArrow(add_vectors, schema)


def _concatenate(parts: list[DataFrame]) -> DataFrame:
    """(id, vec) frames -> (id, their packed vectors end to end), in the order given."""
    joined = parts[0].select("id", F.col("vec").alias("v0"))
    for i, p in enumerate(parts[1:], 1):
        joined = joined.join(p.select("id", F.col("vec").alias(f"v{i}")), "id")
    return joined.select("id", F.concat(*[F.col(f"v{i}") for i in range(len(parts))]).alias("vec"))


def embed(df: DataFrame, *, config: EmbedConfig | None = None, **options: Any) -> DataFrame:
    """Cleora embeddings of a DataFrame, for notebooks and library use.

    Parameters
    ----------
    df
        An event table (columns named by ``hyperedge`` and ``entity`` options, optionally
        ``timestamp``), or Cleora text lines in a ``value`` column when ``columns`` is given.
    config
        A full :class:`EmbedConfig`; keyword ``options`` (any of its fields) override it.

    Returns
    -------
    DataFrame
        ``entity`` string, ``column`` string, ``degree`` double, ``occurrences`` double,
        ``embedding`` array<float> (length ``dim``, unit L2 norm).

    Notes
    -----
    Each iteration cuts the lineage: with ``work_dir`` it is written there as Parquet (and a later
    call with the same arguments resumes from it; the returned frame reads from it, so keep it while
    you use the result); without, ``localCheckpoint`` keeps it in executor storage.

    Examples
    --------
    >>> emb = embed(events, hyperedge="user_id", entity="item_id", dim=128, iterations=3)  # doctest: +SKIP
    """
    unknown = set(options) - field_names()
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; known: {sorted(field_names())}")
    base = config or EmbedConfig(input_format="cleora-tsv" if options.get("columns") else "dataframe",
                                 **({"hyperedge": options.get("hyperedge"), "entity": options.get("entity")}
                                    if not options.get("columns") else {"columns": options["columns"]}))
    cfg = base.replace(**options) if options else base
    spark = df.sparkSession
    work_dir = cfg.work_dir
    if work_dir is not None:
        store: WorkStore | None = WorkStore(spark, work_dir)
    else:
        store = None
    return run_embedding(spark, cfg, df, store=store, input_id=_frame_identity(df)).embeddings


def _frame_identity(df: DataFrame) -> str:
    """A DataFrame has no file identity: fingerprint its schema and canonical plan instead."""
    try:
        plan = str(df.semanticHash())
    except Exception:
        plan = ""
    return hashlib.sha256((str(df.schema) + plan).encode()).hexdigest()


def default_work_dir(output: str) -> str:
    """Beside the output, so executors on a cluster can reach it too."""
    out = output.rstrip("/")
    lp = local_path(out)
    if lp is not None:
        return os.path.join(os.path.dirname(os.path.abspath(lp)) or tempfile.gettempdir(),
                            f"{os.path.basename(lp)}.spark_cleora_work")
    return out + ".spark_cleora_work"
