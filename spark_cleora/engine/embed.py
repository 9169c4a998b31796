"""The Cleora embedding pipeline: input -> hyperedges -> graph -> start vectors -> iterations."""

from __future__ import annotations

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

from .._version import __version__
from ..config import BadInputError, ConfigError, EmbedConfig, field_names
from .graph import (
    ENTITIES_RSD,
    GraphCounts,
    blocks_for,
    build_blocks,
    build_entities,
    check_hyperedge_fits,
    count_entities,
    estimate_entities,
    graph_count_metrics,
    graph_counts,
    observed_counts,
    plans_of,
)
from .hyperedges import Rejections, cleora_text_to_memberships, events_to_memberships
from .start_vectors import given_start_vectors, init_for_names, override_start_vectors, read_start_vectors
from ..storage.paths import local_path, parquet_footer_rows
from .one_task import embed_in_one_task, one_task_bytes, worker_threads
from ..runtime.machine import worker_memory_gb
from .propagate import X_SCHEMA_COLUMNS, propagate, route_scalings, unpacked
from ..runtime.session import job_description
from .work_store import WorkStore
from .vectors import pack
from .whiten import whiten

log = logging.getLogger(__name__)



@dataclass
class EmbedResult:
    """The embeddings (lazy, read from the work store) and what the run did.

    With ``run_embedding(..., single_pass=True)`` and the one-task engine, ``embeddings`` is the
    computation itself: run it with exactly one action (the output write), then call ``finish()`` to add
    what the task reported (entities, per-iteration seconds) to ``report``.
    """

    embeddings: DataFrame
    report: dict[str, Any] = field(default_factory=dict)
    finish: Callable[[], None] = lambda: None


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


def _parallelism(spark: SparkSession) -> int:
    try:
        return max(1, int(spark.conf.get("spark.sql.shuffle.partitions")))
    except Exception:
        return 8


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
    """
    t_all = time.perf_counter()
    timer = _Timer()
    report: dict[str, Any] = {
        "spark_cleora_version": __version__,
        "spark_version": spark.version,
        "python": platform.python_version(),
        "config": cfg.to_dict(),
    }
    columns = cfg.column_spec
    reflexive = len(columns) == 1
    manifest: dict[str, Any] = {"version": __version__}
    if store is not None:  # (the fingerprint reads every local input once: only when there is a store)
        manifest = store.check_or_write_manifest({**manifest, "fingerprint": fingerprint(cfg, input_id, spark)})

    def checkpoint(df: DataFrame, name: str) -> DataFrame:
        """Cut the lineage: write to the store (overwriting), or localCheckpoint without one."""
        return df.localCheckpoint(eager=True) if store is None else store.write(df, name)

    def materialise(df: DataFrame, name: str) -> DataFrame:
        """Like ``checkpoint``, but reuse ``name`` when a previous run of this config finished it."""
        if store is not None and store.is_complete(name):
            log.info("reusing %s from %s", name, store.uri)
            return store.read(name)
        return checkpoint(df, name)

    # --init-vectors: checked before anything expensive runs
    given_table = read_start_vectors(spark.read.parquet(cfg.init_vectors), dim=cfg.dim) if cfg.init_vectors else None

    # -- 1. hyperedges and the graph's blocks -------------------------------------------------
    memory_gb = cfg.block_memory_gb or worker_memory_gb(spark)  # a Python worker's budget
    g = manifest.get("graph", {})
    if store is not None and "shares" in g and store.is_complete("graph/blocks"):
        blocks = store.read("graph/blocks")
        counts = GraphCounts(g["memberships"], g["hyperedges"], g["largest"], g["shares"], {})
        rej = Rejections(counts=g["rejected"], input_rows=g["input_rows"])
        num_blocks = g["num_blocks"]
        log.info("resuming with the prepared graph in %s", store.uri)
    else:
        validation = None
        if cfg.input_format == "cleora-tsv":
            with job_description(spark, "spark_cleora: validate input"):
                raw, rej = cleora_text_to_memberships(source, cfg)  # counted up front (sizes the blocks)
            units = rej.accepted_units
            log.info("read %d input rows (%d rejected) in %.1fs", rej.input_rows, rej.total, timer.lap())
            if units == 0:
                raise BadInputError("no input rows left after validation")
        else:  # events: the rules are counted inside the graph build (no pass of their own)
            raw, validation = events_to_memberships(source, cfg)
            # local Parquet: the footers, read here; else a Spark count (Parquet/Delta: also footers)
            units = parquet_footer_rows(cfg.inputs) if cfg.input_format == "parquet" else None
            from_footers = units is not None
            if units is None:
                with job_description(spark, "spark_cleora: count input rows"):
                    units = source.count()
            if units == 0:
                raise BadInputError("events: the input is empty (no rows were read)")
        num_blocks = cfg.num_blocks or blocks_for(units, dim=cfg.dim, block_memberships=cfg.block_memberships,
                                                  memory_gb=memory_gb, parallelism=_parallelism(spark))
        built = build_blocks(raw, reflexive=reflexive, num_blocks=num_blocks)
        with job_description(spark, "spark_cleora: build graph"):
            if store is not None and not store.is_complete("graph/blocks"):
                # the counts are observed while the blocks are written: no job of their own
                observed = Observation()
                blocks = store.write(built.observe(observed, *graph_count_metrics()), "graph/blocks")
                counts = observed_counts(observed.get)
            else:
                blocks = materialise(built, "graph/blocks")
                counts = graph_counts(blocks)
        if validation is not None:
            rej = validation.settle(counts.input_rows, units=counts.input_rows.get(None, 0))
            if rej.input_rows != units and from_footers:  # a file layout the footer walk misread?
                with job_description(spark, "spark_cleora: count input rows"):
                    log.warning("the Parquet footers say %d rows; counting with Spark", units)
                    units = source.count()
            if rej.input_rows != units:  # every input row is either in the graph or counted as rejected
                raise RuntimeError(f"the graph build saw {rej.input_rows} input rows, the input has {units}")
            log.info("read %d input rows (%d rejected)", rej.input_rows, rej.total)
            if rej.accepted_units == 0:
                raise BadInputError("no input rows left after validation")
        if store is not None:
            manifest["graph"] = g = {
                "memberships": counts.memberships, "hyperedges": counts.hyperedges, "largest": counts.largest,
                "shares": counts.shares, "num_blocks": num_blocks,
                "rejected": rej.counts, "input_rows": rej.input_rows,
            }
            store.save_manifest(manifest)
        log.info("graph: %d hyperedges, %d memberships, %d blocks (%.1fs)", counts.hyperedges, counts.memberships,
                 num_blocks, timer.lap())
    check_hyperedge_fits(counts.largest, cfg.dim, memory_gb)
    report.update(input_rows=rej.input_rows, rejected=rej.counts, hyperedges=counts.hyperedges,
                  memberships=counts.memberships, num_blocks=num_blocks)
    plans = plans_of(blocks)

    entities: DataFrame | None = None

    def entity_table(with_vectors: bool) -> DataFrame:
        """``graph/entities`` (made once, on demand: the one-task engine sums the entities itself)."""
        nonlocal entities
        if entities is None:
            with job_description(spark, "spark_cleora: entities"):
                ent = build_entities(blocks, columns)
                if with_vectors:  # the start vectors are a function of the name: made in the same pass
                    ent = with_start_vectors(ent, cfg)
                entities = materialise(ent, "graph/entities")
                n = count_entities(entities)
            if store is not None:
                g["entities"] = n
                store.save_manifest(manifest)
            report["entities"] = n
            log.info("%d entities (%.1fs)", n, timer.lap())
        return entities

    # -- 2. start vectors and iterations -------------------------------------------------------
    start = store.last_iteration(cfg.iterations) if store is not None else None
    start = start or 0
    engine = choose_engine(spark, cfg, counts, g.get("entities"), memory_gb, report, blocks=blocks)
    if engine == "one-task" and any(s <= start for s in cfg.multiscale):
        engine = "shuffle"  # the resumed run's earlier --multiscale parts are in the store, not in the task
    report["engine"] = engine
    report["resumed_from_iteration"] = start or None
    if engine == "one-task":
        start_vectors = None
        if start > 0:
            log.info("resuming from iteration %d", start)
            start_vectors = store.read(store.iteration_name(start)).select("id", "vec")
        elif given_table is not None:  # node features replace the hash init where given
            given, report["init_vectors"] = given_start_vectors(*given_table, entity_table(False), dim=cfg.dim)
            start_vectors = given.select("id", F.col("given").alias("vec"))
        done = embed_in_one_task(
            blocks, columns=columns, dim=cfg.dim, markov=cfg.markov, init=cfg.init, seed=cfg.seed,
            first=start + 1, last=cfg.iterations, multiscale=cfg.multiscale, whiten=cfg.whiten,
            residual=cfg.residual, start_vectors=start_vectors, threads=report["one_task"]["threads"],
        )

        def task_report(task: dict[str, Any]) -> None:
            report.update(entities=task["entities"], iteration_seconds=task["iteration_seconds"],
                          seconds_to_embed=round(time.perf_counter() - t_all, 3))
            report["one_task"].update({k: task[k] for k in ("read_seconds", "prepare_seconds") if k in task})
            log.info("%s entities, iterations %d-%d in one task: %s s (%.1fs with reading and writing)",
                     task["entities"], start + 1, cfg.iterations, task["iteration_seconds"], timer.lap())

        if single_pass:  # the task's report is observed during the caller's one action
            observed = Observation("spark_cleora_one_task")
            emb = done.observe(observed, F.max("_report").alias("report")).drop("_report")
            def finish() -> None:
                got = observed.get.get("report")  # None only if the task wrote no row (no output column)
                task_report(json.loads(got) if got else {"entities": None, "iteration_seconds": []})

            return EmbedResult(emb, report, finish=finish)
        with job_description(spark, f"spark_cleora: iterations {start + 1}-{cfg.iterations} in one task"):
            done = materialise(done, "one-task")
            task_report(json.loads(done.filter(F.col("_report").isNotNull()).select("_report").first()["_report"]))
        return EmbedResult(done.drop("_report"), report)

    if start > 0:
        log.info("resuming from iteration %d", start)
        entity_table(given_table is None)
        x = store.read(store.iteration_name(start)).select(*X_SCHEMA_COLUMNS)
    elif given_table is None:  # made with the entities (see with_start_vectors)
        x = entity_table(True).select(*X_SCHEMA_COLUMNS)
    else:
        ent = entity_table(False)
        with job_description(spark, "spark_cleora: start vectors"):
            init = with_start_vectors(ent, cfg).select(*X_SCHEMA_COLUMNS)
            given, report["init_vectors"] = given_start_vectors(*given_table, ent, dim=cfg.dim)
            x = materialise(override_start_vectors(init, given), "iter=0000")
        log.info("start vectors (%s, seed %d, dim %d) in %.1fs", cfg.init, cfg.seed, cfg.dim, timer.lap())
    iteration_seconds: list[float] = []
    # --multiscale: the iterations to concatenate (kept in the store; earlier ones re-read on resume)
    parts = {s: store.read(store.iteration_name(s)).select(*X_SCHEMA_COLUMNS)
             for s in cfg.multiscale if s <= start and store is not None}
    for k in range(start + 1, cfg.iterations + 1):
        with job_description(spark, f"spark_cleora: iteration {k}/{cfg.iterations}"):
            nxt = propagate(x, plans, dim=cfg.dim, num_blocks=num_blocks, residual=cfg.residual)
            if cfg.whiten == "every" or (cfg.whiten == "final" and k == cfg.iterations):
                # pycleora 3.2.1 whitens after every iteration, 3.0/3.2.0 once at the end
                nxt = whiten(checkpoint(nxt, "whiten-input"), dim=cfg.dim)
            x = checkpoint(nxt, store.iteration_name(k) if store else "")
            if k in cfg.multiscale:
                parts[k] = x
            if store is not None and k - 1 > 0 and not cfg.keep_work and k - 1 not in cfg.multiscale:
                store.drop_iteration(k - 1)  # only the last finished iteration is needed to resume
        dt = timer.lap()
        iteration_seconds.append(round(dt, 3))
        log.info("iteration %d/%d: %d rows in %.1fs (elapsed %.1fs)", k, cfg.iterations, report["entities"], dt,
                 time.perf_counter() - t_all)
    report["iteration_seconds"] = iteration_seconds

    if cfg.multiscale:
        x = _concatenate([whiten(parts[s], dim=cfg.dim) if cfg.whiten == "final" and s < cfg.iterations
                          else parts[s] for s in cfg.multiscale])
    emb = (
        unpacked(x, dim=cfg.output_dim)
        .join(entities.filter(F.col("output")).select("id", "entity", "column", "degree", "occurrences"), "id")
        .select("entity", "column", F.col("degree").cast("double").alias("degree"),
                F.col("occurrences").cast("double").alias("occurrences"), F.col("vec").alias("embedding"))
    )
    report["seconds_to_embed"] = round(time.perf_counter() - t_all, 3)
    return EmbedResult(emb, report)


def choose_engine(spark: SparkSession, cfg: EmbedConfig, counts: GraphCounts, n_entities: int | None,
                  memory_gb: float, report: dict[str, Any], *, blocks: DataFrame) -> str:
    """``cfg.engine``, with ``auto`` resolved: ``one-task`` when its estimated memory fits ``memory_gb``
    (the estimate goes into ``report``). Before the entities are summed their count is bounded by the
    blocks' entity counts (``counts.shares``); when that bound does not fit, a HyperLogLog estimate
    (plus three standard deviations) of the distinct entities decides."""
    threads = worker_threads(spark)

    def need(entities: int) -> int:
        return one_task_bytes(entities=entities, dim=cfg.dim, kept=max(1, len(cfg.multiscale)),
                              memberships=counts.memberships, hyperedges=counts.hyperedges, shares=counts.shares)

    estimate = need(n_entities or counts.shares)
    engine = cfg.engine
    if engine == "auto" and estimate > memory_gb * 2**30 and not n_entities:
        with job_description(spark, "spark_cleora: estimate entities"):
            estimate = need(min(counts.shares, int(estimate_entities(blocks) * (1 + 3 * ENTITIES_RSD)) + 1))
    if engine == "auto":
        engine = "one-task" if estimate <= memory_gb * 2**30 else "shuffle"
    report["one_task"] = {"estimated_bytes": int(estimate), "threads": threads, "memory_gb": memory_gb}
    log.info("engine %s (one-task would need ~%.2f GiB of --block-memory-gb %g)", engine, estimate / 2**30,
             memory_gb)
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
