"""The one-task engine: entities, start vectors and every iteration of a graph that fits one Python
worker, in that worker.

The shuffle engine (:mod:`spark_cleora.engine.propagate`) pays two Python stages and two shuffles per
iteration, and the entity table, the start vectors and the output join are jobs of their own; on a
graph of a few million memberships those fixed costs are most of the run. When the whole state fits
the memory this task may use (``--block-memory-gb``; by default in local mode what all the workers
would share, see :func:`~spark_cleora.runtime.machine.one_task_memory_gb` and :func:`one_task_bytes`), this engine reads
the graph's blocks (the entities' per-block shares and the compiled plans) once into a single task and
does the rest there, with the same arithmetic as the other path: the entity aggregate of
:func:`~spark_cleora.engine.graph.build_entities`, the hash start vectors of :mod:`spark_cleora.engine.start_vectors`, the
product of :func:`~spark_cleora.engine.propagate.block_product` (over the blocks' plans merged
into one plan, so no vector is copied per block), :func:`~spark_cleora.engine.propagate.normalize_rows`,
and the same whitening. The product, the row normalisation and the start vectors run on a thread pool,
ranges of the rows (numba's compiled products, the row normalisation), of the entities (the start
vectors) or slices of the dimensions (scipy's products) handed to the threads in turn (numba's loops,
numpy and scipy release the GIL), so the task uses the worker's cores: while it runs it is the only
task of the job.

The product's sums are float32 runs of at most ``F32_TERMS`` terms added in float64
(:func:`~spark_cleora.engine.propagate.prepare_plan`): float32 products over whole rows (pycleora's) are
~2x faster than float64, but a 200k-entity hyperedge's float32 sum is off by 1e-3; cut into runs, a
sum's error stays that of a 64-term float32 sum whatever the hyperedge's size.

Nothing reaches the driver: the task writes the output rows (``ONE_TASK_SCHEMA``), and its report
(entity count, per-iteration seconds) rides as JSON on the first row.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Column
from ..errors import EntityHashCollisionError
from .graph import BLOCK_ARROW, ENTITY_PART, INPUT_ROWS, PLAN, blocks_of_partition, keyed_memberships
from .start_vectors import COMPILED_MIN_VALUES, init_for_names, preload
from .compiled import numba_installed
from .propagate import (COMPILED_MIN_MEMBERSHIPS, SLICE_COLUMNS, Scratch, _maybe_inject_failure, block_product,
                        compiled_products, load_plan, merge_plans, normalize_rows, prepare_plan, product_by_rows)
from .vectors import to_list_array, unpack
from .whiten import whiten_array
from ..storage.task_parquet import TaskParquetTarget, read_task_parquet, write_task_parquet

#: the result: the embed output's rows, and the task's report (JSON) on the first row
ONE_TASK_SCHEMA = ("entity string, column string, degree double, occurrences double, embedding array<float>, "
                   "_report string")
#: ``kind`` of the start-vector rows (id, vec) fed to the task next to the ``graph/blocks`` rows
START_VECTORS = 3
THREADS_CONF = "spark.cleora.oneTask.threads"
#: input rows up to which the one-task engine builds the graph in its own task (``0``: never); see
#: :func:`embed_events_in_one_task`
SMALL_INPUT_CONF = "spark.cleora.oneTask.smallInputRows"
#: its default: on 2 cores, 1M events: 18.1 -> ~14 s end to end (the graph stage's shuffle, write and
#: read back and two jobs are gone); the graph is then built on one core, so large inputs keep the
#: distributed build
SMALL_INPUT_ROWS = 2_000_000
#: ``ONE_TASK_SCHEMA`` as Arrow (the report-only row of :func:`embed_events_in_one_task`)
_ONE_TASK_ARROW = pa.schema([("entity", pa.string()), ("column", pa.string()), ("degree", pa.float64()),
                             ("occurrences", pa.float64()), ("embedding", pa.list_(pa.float32())),
                             ("_report", pa.string())])
#: the output rows without the report: the file the task writes itself (``parquet=``)
_OUTPUT_ARROW = pa.schema([f for f in _ONE_TASK_ARROW if f.name != "_report"])
_OUT_ROWS = 1 << 14  # rows per output batch (Arrow list offsets are int32: keep batches small)

_NORM_ROWS = 1 << 15  # rows per piece of the row normalisation handed to a thread

#: bytes per entity x dimension held at once: the float32 rows (4, the next iteration's written into the
#: same buffer) and their float64 products (8); plus 4 per earlier --multiscale part kept, or, when the
#: K parts are concatenated for the output, 8 x K (the parts and their concatenation)
BYTES_PER_ENTITY_DIM = 12
#: more bytes per entity x dimension while rows are whitened beside the products: the float64 copy,
#: the centred rows and the float32 result
BYTES_PER_ENTITY_DIM_WHITEN = 16
#: bytes per entity or hyperedge x slice column x thread: a thread's temporaries of one slice
#: (:func:`~spark_cleora.engine.propagate.block_product`, kept in the thread's ``Scratch`` from slice to
#: slice). One side (a reflexive column): the slice's contiguous float32 copy and the runs' float32
#: products (8 of the 12 per entity); the runs' products and the scaled float32 sums per hyperedge (8 of
#: the 12). Two sides: the second float64 product per entity as well (16 of 20), the other side's
#: float32 sums per hyperedge (12 of 20). The rest of each figure is for the float64 sums of the rows
#: and columns that have several runs (on the 10M-event bench graph 2% of the hyperedges, and extra runs
#: for a quarter of the entities' count). The residual's scaled rows add 12 per entity.
BYTES_PER_SLICE = {"one side": (12, 12), "two sides": (20, 20)}
BYTES_PER_ENTITY_SLICE_RESIDUAL = 12
#: the same with numba's loops (:mod:`~spark_cleora.engine.product_kernels`), per column of the slice that
#: all threads work on: an entity's float32 copy of its slice of the rows (scaled, or not whole rows), a
#: hyperedge's scaled float32 sums of each side (their float64 and float32 run sums are a row's, per thread)
BYTES_PER_ENTITY_SLICE_COMPILED = 4
BYTES_PER_HYPEREDGE_SLICE_COMPILED = {"one side": 4, "two sides": 8}
#: bytes of the compiled graph per membership, at the most while its float32 runs are cut
#: (:func:`~spark_cleora.engine.propagate.prepare_plan`): CSR indices and float64 data of both sides (24)
#: held as the plans' Arrow blobs and the merged matrices (the loaded plans are gone by then), the runs
#: (16) and the cutting's own temporaries (44)
BYTES_PER_MEMBERSHIP = 108
#: bytes of one entity's share row of a block (ids, counts, its name) while the entities are summed
BYTES_PER_SHARE = 160
#: the widest slice of the product is the shuffle engine's (``SLICE_COLUMNS``): on the 10M-event bench
#: graph (8M memberships, 386k entities, 2 threads) as fast as whole halves of the rows, slices of 32
#: ~10 % slower. A graph that does not fit with it gets narrower slices before the shuffle engine.
SLICE_CHOICES = (SLICE_COLUMNS, 32, 16, 8)


def slice_width(dim: int, threads: int, widest: int = SLICE_COLUMNS) -> int:
    """Columns of one slice of the product: at most ``widest``, and narrow enough that every thread
    gets one."""
    return max(1, min(widest, -(-dim // max(1, threads))))


def worker_threads(spark: SparkSession) -> int:
    """Threads for the one task: ``spark.cleora.oneTask.threads``, else this machine's cores (local mode:
    the worker's; on a cluster set the conf to the executors' cores)."""
    try:
        conf = int(spark.conf.get(THREADS_CONF, "0") or 0)
    except (ValueError, TypeError):
        conf = 0
    return conf if conf > 0 else max(1, os.cpu_count() or 1)


def small_input_rows(spark: SparkSession) -> int:
    """``spark.cleora.oneTask.smallInputRows``, else ``SMALL_INPUT_ROWS``."""
    try:
        return max(0, int(spark.conf.get(SMALL_INPUT_CONF, str(SMALL_INPUT_ROWS)) or 0))
    except (ValueError, TypeError):
        return SMALL_INPUT_ROWS


def slice_choices(dim: int) -> tuple[int, ...]:
    """The product's slice widths the driver tries, widest first: whole rows (numba's loops run every thread
    on each slice), then ``SLICE_CHOICES``."""
    return tuple(dict.fromkeys((dim, *(w for w in SLICE_CHOICES if w < dim))))


def one_task_bytes(*, entities: int, dim: int, kept: int, memberships: int, hyperedges: int, shares: int = 0,
                   threads: int = 1, reflexive: bool = False, residual: bool = False, whiten: bool = False,
                   slice_columns: int = SLICE_COLUMNS) -> int:
    """Estimated peak memory of the one-task engine (see the ``BYTES_*`` constants) with ``threads``
    threads; ``entities`` may be an upper bound (the sum of the blocks' entity counts, ``shares``, before
    the entities are known). ``reflexive``: the graph has one side (else the two-sided bound);
    ``kept``: the iterations in the output (``--multiscale``); ``whiten``: rows are whitened;
    ``slice_columns``: the widest slice of the product. The products' temporaries are those of the path
    that needs more (the task may or may not have numba): numba's loops hold a slice of ``slice_columns``
    columns at once, scipy's one of at most ``SLICE_COLUMNS`` per thread."""
    in_flight = slice_width(dim, threads, min(slice_columns, SLICE_COLUMNS)) * max(1, threads)  # scipy's
    per_entity, per_hyperedge = BYTES_PER_SLICE["one side" if reflexive else "two sides"]
    per_entity += BYTES_PER_ENTITY_SLICE_RESIDUAL if residual else 0
    loops = min(slice_columns, dim)  # numba's: the rows' float32 copy (and the residual's), the sums
    per_entity_loops = BYTES_PER_ENTITY_SLICE_COMPILED + (BYTES_PER_ENTITY_SLICE_RESIDUAL if residual else 0)
    per_hyperedge_loops = BYTES_PER_HYPEREDGE_SLICE_COMPILED["one side" if reflexive else "two sides"]
    return (
        entities * dim * max(BYTES_PER_ENTITY_DIM + 4 * (kept - 1) + (BYTES_PER_ENTITY_DIM_WHITEN if whiten else 0),
                             8 * kept if kept > 1 else 0)
        + max(entities * in_flight * per_entity + hyperedges * in_flight * per_hyperedge,
              entities * loops * per_entity_loops + hyperedges * loops * per_hyperedge_loops)
        + memberships * BYTES_PER_MEMBERSHIP
        + shares * BYTES_PER_SHARE
    )


def embed_in_one_task(
    blocks: DataFrame,
    *,
    columns: tuple[Column, ...],
    dim: int,
    markov: str,
    init: str,
    seed: int,
    first: int,
    last: int,
    multiscale: tuple[int, ...] = (),
    whiten: str = "none",
    residual: float = 0.0,
    start_vectors: DataFrame | None = None,
    threads: int = 1,
    slice_columns: int = SLICE_COLUMNS,
    parquet: TaskParquetTarget | None = None,
    blocks_dir: str | None = None,
) -> DataFrame:
    """The embed output (``ONE_TASK_SCHEMA``) from ``graph/blocks``, lazily, in one task.

    Iterations ``first..last`` run from the hash start vectors (``first = 1``), with ``start_vectors``
    (``id``, ``vec`` packed) in their place where given: iteration ``first - 1`` of a resumed run, or
    ``--init-vectors``. ``multiscale``, ``whiten`` and ``residual`` as in :class:`~spark_cleora.config.EmbedConfig`
    (``multiscale`` iterations must all be >= ``first``). With ``parquet`` the task writes the output
    rows there itself (:mod:`spark_cleora.storage.task_parquet`) and returns one row, its report
    (``written``: the rows in the file). With ``blocks_dir`` (the local directory ``blocks`` was read
    from, and no ``start_vectors``) the task reads the blocks there itself
    (:func:`~spark_cleora.storage.task_parquet.read_task_parquet`).
    """
    params = _task_params(columns=columns, dim=dim, markov=markov, init=init, seed=seed, first=first, last=last,
                          multiscale=multiscale, whiten=whiten, residual=residual, threads=threads,
                          slice_columns=slice_columns, parquet=parquet)
    columns_read = ["kind", "block", "id", "entity", "col", "occurrences", "degree", "plan", "memberships"]
    if blocks_dir is not None:
        if start_vectors is not None:
            raise ValueError("blocks_dir: the task reads no start vectors")
        import pyarrow.dataset as ds

        def run_on_files(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for _ in batches:  # the one placeholder row that gives the task its place
                pass
            _maybe_inject_failure("one-task engine")
            t0 = time.perf_counter()
            graph = read_task_parquet(blocks_dir, columns_read, where=ds.field("kind").isin([ENTITY_PART, PLAN]))
            yield from _embed(iter(graph.to_batches()), **params, read_seconds=time.perf_counter() - t0)

        return blocks.sparkSession.range(1, numPartitions=1).mapInArrow(run_on_files, ONE_TASK_SCHEMA)
    graph = blocks.filter(F.col("kind").isin(ENTITY_PART, PLAN)).select(
        *columns_read, F.lit(None).cast("binary").alias("vec"))
    if start_vectors is not None:
        graph = graph.unionByName(start_vectors.select(F.lit(START_VECTORS).alias("kind"), "id", "vec"),
                                  allowMissingColumns=True)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _maybe_inject_failure("one-task engine")
        yield from _embed(batches, **params)

    # coalesce, not repartition: the blocks are a checkpoint, read straight into the one task
    return graph.coalesce(1).mapInArrow(run, ONE_TASK_SCHEMA)


def _task_params(*, columns: tuple[Column, ...], dim: int, markov: str, init: str, seed: int, first: int, last: int,
                 multiscale: tuple[int, ...], whiten: str, residual: float, threads: int,
                 slice_columns: int, parquet: TaskParquetTarget | None) -> dict:
    """:func:`_embed`'s keyword arguments (what the task is sent)."""
    if any(s < first for s in multiscale):
        raise ValueError(f"multiscale {multiscale}: iterations before {first} are not in this task")
    return {
        "col_names": [c.name for c in columns], "outputs": [not c.transient for c in columns], "dim": dim,
        "markov": markov, "init": init, "seed": seed, "first": first, "last": last,
        "keep": tuple(multiscale) or (last,), "residual": residual, "threads": threads,
        "slice_columns": slice_columns, "parquet": parquet,
        "whiten_after": frozenset(k for k in range(first, last + 1)
                                  if whiten == "every" or (whiten == "final" and k == last)),
        # --whiten final with --multiscale: each earlier part is whitened on its own, as pycleora does
        "whiten_part": whiten == "final",
    }


def embed_events_in_one_task(
    raw: DataFrame,
    *,
    columns: tuple[Column, ...],
    dim: int,
    markov: str,
    init: str,
    seed: int,
    last: int,
    multiscale: tuple[int, ...] = (),
    whiten: str = "none",
    residual: float = 0.0,
    threads: int = 1,
    slice_columns: int = SLICE_COLUMNS,
    parquet: TaskParquetTarget | None = None,
    constant: tuple[str, ...] = (),
) -> DataFrame:
    """The embed output (``ONE_TASK_SCHEMA``) of a small input, lazily, in one task that builds the graph too.

    ``raw`` are the memberships of :func:`~spark_cleora.engine.hyperedges.events_to_memberships` (one
    column), flagged rows included. The task makes the graph as one block with the graph build's own
    code (:func:`~spark_cleora.engine.graph.blocks_of_partition`), then runs :func:`embed_in_one_task`'s
    steps on it: no shuffle, no ``graph/blocks`` written and read back, one Spark job for the whole run.
    The report (first row) adds ``graph``: the input rows per rule (``[rule or null, rows]`` pairs),
    the memberships and the hyperedges. A graph with no membership
    (every row rejected) gives one row with a null ``entity`` that carries the report only (and, with
    ``parquet``, no file). ``parquet`` as in :func:`embed_in_one_task`; ``constant`` as in
    :func:`~spark_cleora.engine.graph.keyed_memberships`.
    """
    params = _task_params(columns=columns, dim=dim, markov=markov, init=init, seed=seed, first=1, last=last,
                          multiscale=multiscale, whiten=whiten, residual=residual, threads=threads,
                          slice_columns=slice_columns, parquet=parquet)
    reflexive = len(columns) == 1

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _maybe_inject_failure("one-task engine")
        t0 = time.perf_counter()
        rows = list(blocks_of_partition(batches, reflexive=reflexive))
        graph = _graph_report(rows)
        graph["build_seconds"] = round(time.perf_counter() - t0, 3)
        if graph["memberships"]:
            yield from _embed(iter(rows), **params, graph=graph)
        else:  # nothing accepted: the report alone (the caller drops the row, then fails with the counts)
            yield _report_row({"graph": graph})

    return keyed_memberships(raw, None, constant).mapInArrow(run, ONE_TASK_SCHEMA)


def _graph_report(rows: list[pa.RecordBatch]) -> dict:
    """The counts of a block built in the task: what ``graph_count_metrics`` observes on ``graph/blocks``."""
    t = pa.Table.from_batches(rows, schema=BLOCK_ARROW)
    kind = t.column("kind")
    counted = t.filter(pc.equal(kind, INPUT_ROWS))
    plans = t.filter(pc.equal(kind, PLAN))
    total = {name: pc.sum(plans.column(name)).as_py() or 0 for name in ("memberships", "hyperedges")}
    return {"input_rows": [[r, n] for r, n in zip(counted.column("entity").to_pylist(),
                                                  counted.column("rows").to_pylist())], **total}


def _entities(shares: pa.Table, outputs: list[bool]):
    """The entity aggregate of :func:`spark_cleora.engine.graph.build_entities`, sorted by id (an
    entity's shares summed block after block, whatever order the rows came in)."""
    order = pc.sort_indices(shares, sort_keys=[("id", "ascending"), ("entity", "ascending"), ("block", "ascending"),
                                               ("col", "ascending")])
    ids = shares.column("id").to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)] - 1
    names = shares.column("entity").combine_chunks().take(order)
    first_names, last_names = names.take(pa.array(starts)), names.take(pa.array(ends))
    clash = pc.not_equal(first_names, last_names)
    if pc.any(clash).as_py():
        i = int(np.flatnonzero(clash.to_numpy(zero_copy_only=False))[0])
        raise EntityHashCollisionError(f"different entity names share a 64-bit key ({first_names[i].as_py()!r} vs "
                                       f"{last_names[i].as_py()!r}); rename one of them")
    col = shares.column("col").to_numpy()[order]
    return {
        "ids": ids[starts],
        "names": first_names,
        "col": np.minimum.reduceat(col, starts),
        "output": np.maximum.reduceat(np.asarray(outputs, dtype=np.int8)[col], starts).astype(bool),
        "occurrences": np.add.reduceat(shares.column("occurrences").to_numpy()[order], starts),
        "degree": np.add.reduceat(shares.column("degree").to_numpy()[order], starts),
    }


def _embed(batches, *, col_names, outputs, dim, markov, init, seed, first, last, keep, residual, threads, slice_columns,
           whiten_after, whiten_part, parquet: TaskParquetTarget | None, graph: dict | None = None,
           read_seconds: float = 0.0) -> Iterator[pa.RecordBatch]:
    t_start = time.perf_counter() - read_seconds  # (blocks read by the task itself: before this call)
    batches = [b for b in batches if b.num_rows]
    if not batches:
        if parquet is not None:  # no graph: an empty output, as Spark's writer would leave it
            written = write_task_parquet(parquet, iter(()), _OUTPUT_ARROW)
            yield _report_row({"entities": None, "iteration_seconds": [], "written": written})
        return
    t_read = time.perf_counter()
    t = pa.Table.from_batches(batches)
    del batches
    kind = t.column("kind")
    ent = _entities(t.filter(pc.equal(kind, ENTITY_PART)), outputs)
    ids, n = ent["ids"], len(ent["ids"])
    # the start vectors' and the products' compiled loops (if they will run) load while the plans are read
    loading = threading.Thread(target=_preload, args=(init, n * dim), daemon=True) if first == 1 else None
    if loading is not None:
        loading.start()
    # numba's loops over whole rows normalise each range of entities as soon as it is summed (see _iterate);
    # else the products' float64 buffer, its pages first touched on a thread of its own while the plans load:
    # a fresh array's page faults (0.8 GB at 10M events: 0.1-2.6 s on this VM) fall on no thread's path
    memberships = pc.sum(t.column("memberships")).as_py() if "memberships" in t.column_names else None
    y = touching = None
    if not (slice_columns >= dim and (memberships or 0) >= COMPILED_MIN_MEMBERSHIPS and numba_installed()):
        y = np.empty((n, dim))
        touching = threading.Thread(target=y.fill, args=(0.0,), daemon=True)
        touching.start()
    plans = []
    # block by block, whatever order the rows came in: the hyperedges' order is the order of the sums. Each
    # blob is read where it lies: a filter, a take and bytes of each would copy the plans three times
    # (~100 MB each at 10M events: 0.1-0.6 s of fresh pages in the task)
    at = np.flatnonzero(kind.to_numpy() == PLAN)
    blobs = t.column("plan")
    for i in at[np.argsort(t.column("block").take(pa.array(at)).to_numpy(), kind="stable")]:
        p = load_plan(blobs[int(i)].as_buffer())
        g = np.searchsorted(ids, p["ids"])
        if len(p["ids"]) and (g.max() >= n or not np.array_equal(ids[g], p["ids"])):
            raise RuntimeError("one-task engine: a block plan names entities that have no share row")
        plans.append((p, g))
    if loading is not None:
        loading.join()
    x = init_for_names(ent["names"].to_pylist(), dim, seed=seed, method=init, threads=threads) if first == 1 else None
    given = t.filter(pc.equal(kind, START_VECTORS))
    if given.num_rows:
        g = np.searchsorted(ids, given.column("id").to_numpy())
        g = np.minimum(g, n - 1)
        found = ids[g] == given.column("id").to_numpy()
        if x is None:
            if not found.all() or len(np.unique(g)) != n:
                raise RuntimeError("one-task engine: the resumed iteration does not cover every entity")
            x = np.empty((n, dim), dtype=np.float32)
        x[g[found]] = unpack(given.column("vec"), dim)[found]
    if x is None:
        raise RuntimeError(f"one-task engine: starting at iteration {first} needs the vectors of iteration {first - 1}")
    x = np.asarray(x, dtype=np.float32)
    del t, given
    degree = ent["degree"]
    if markov == "left":
        pre, post = np.ones(n), 1.0 / degree
    else:
        pre = post = 1.0 / np.sqrt(degree)
    if touching is not None:
        touching.join()
    t_ready = time.perf_counter()
    parts, seconds, width = _iterate(x, y, plans, pre, post, dim=dim, first=first, last=last, keep=keep, residual=residual,
                              whiten_after=whiten_after, threads=threads, slice_columns=slice_columns)
    if whiten_part:
        parts = {k: (v if k == last else whiten_array(v).astype(np.float32)) for k, v in parts.items()}
    emb = parts[keep[0]] if len(keep) == 1 else np.hstack([parts[k] for k in keep])
    del parts
    out = np.flatnonzero(ent["output"])
    names = ent["names"].take(pa.array(out))
    column = pa.array(np.asarray(col_names, dtype=object)[ent["col"][out]], pa.string())
    report = {"entities": n, "iteration_seconds": seconds, "slice_columns": width,
              "read_seconds": round(t_read - t_start, 3), "prepare_seconds": round(t_ready - t_read, 3),
              "threads": threads, **({"graph": graph} if graph is not None else {})}
    def output_rows() -> Iterator[pa.RecordBatch]:
        for lo in range(0, len(out), _OUT_ROWS):
            rows = out[lo:lo + _OUT_ROWS]
            m = len(rows)
            yield pa.RecordBatch.from_arrays(
                [names.slice(lo, m), column.slice(lo, m), pa.array(ent["degree"][rows]),
                 pa.array(ent["occurrences"][rows]), to_list_array(emb[rows])], schema=_OUTPUT_ARROW)

    if parquet is not None:  # the task writes the file; Spark gets the report
        t_write = time.perf_counter()
        written = write_task_parquet(parquet, output_rows(), _OUTPUT_ARROW)
        yield _report_row({**report, "written": written, "write_seconds": round(time.perf_counter() - t_write, 3)})
        return
    for i, batch in enumerate(output_rows()):  # the report rides on the first row
        m = batch.num_rows
        yield pa.RecordBatch.from_arrays(
            [*batch.columns, pa.array([json.dumps(report) if i == 0 else None] + [None] * (m - 1), pa.string())],
            schema=_ONE_TASK_ARROW)


def _preload(init: str, values: int) -> None:
    """Load numba's loops the task will run: the start vectors' (:func:`preload`) and, on a graph large
    enough that they will run, the products' (:func:`~spark_cleora.engine.propagate.compiled_products`)."""
    preload(init, values)
    if values >= COMPILED_MIN_VALUES:
        compiled_products()


def _residual_rows(x: np.ndarray, factor: float) -> np.ndarray:
    """Residual mixing's share of float32 rows ``x``: ``factor`` x each value in float64, rounded to float32
    (the shuffle engine's residual rows are float32 partials), to add to their float64 products."""
    return (x.astype(np.float64) * factor).astype(np.float32)


def _report_row(report: dict) -> pa.RecordBatch:
    """A row with a null ``entity`` that carries the task's report only."""
    return pa.RecordBatch.from_pydict(
        {"entity": [None], "column": [None], "degree": [None], "occurrences": [None],
         "embedding": pa.nulls(1, pa.list_(pa.float32())), "_report": [json.dumps(report)]},
        schema=_ONE_TASK_ARROW)


def _iterate(x, y, plans, pre, post, *, dim, first, last, keep, residual, whiten_after, threads,
             slice_columns=SLICE_COLUMNS):
    """Iterations ``first..last`` from ``x`` (float32 [n, dim]): ({kept iteration: float32 rows}, seconds,
    the slices' width); ``y`` (float64 [n, dim], or None to make it when needed) holds every iteration's
    products; ``plans`` ((plan, entity indices) per block) is consumed.

    With numba's loops over whole rows (``slice_columns`` >= ``dim``), one
    :func:`~spark_cleora.engine.propagate.product_by_rows` per iteration: the threads take ranges of
    entities, and each range's float64 rows are divided by max(‖row‖, 1e-10)
    (:func:`~spark_cleora.engine.propagate.normalize_rows`) into the float32 rows as soon as they are
    summed, so ``y`` is not used. Otherwise one :func:`~spark_cleora.engine.propagate.block_product` per
    slice of the dimensions into ``y``: with numba's loops the slices (``slice_columns`` wide, narrower
    than whole rows when memory is short) one after the other, the threads taking ranges of rows of each;
    with scipy's, the slices (:func:`slice_width`) handed to the threads in turn, a thread's float64
    temporaries one slice, which stays in cache; then the rows of ``y`` are normalised, the threads taking
    ranges of rows. Each column's sums are those of a whole-row product, and each row's normalisation the
    shuffle engine's: the same bits on every path.
    """
    n = len(x)
    merged = merge_plans(plans, n)
    plans.clear()  # consumed: the merged plan replaces them
    prepare_plan(merged, drop=True)  # its form (numba's loops or scipy's runs), once, before the threads share it
    threads = max(1, min(threads, dim, os.cpu_count() or 1))
    # numba's loops: every thread on each slice, ranges of rows each (whole rows read once per slice);
    # scipy's: a slice per thread
    compiled = "kernels" in merged
    width = min(slice_columns, dim) if compiled else slice_width(dim, threads, min(slice_columns, SLICE_COLUMNS))
    columns = [(lo, min(lo + width, dim)) for lo in range(0, dim, width)]
    rows = [(lo, min(lo + _NORM_ROWS, n)) for lo in range(0, n, _NORM_ROWS)]
    factor = residual / (1.0 - residual) if residual else 0.0
    seconds: list[float] = []
    kept: dict[int, np.ndarray] = {first - 1: x} if first - 1 in keep else {}  # --iterations 0
    by_rows = compiled and width >= dim
    if y is None and not by_rows:
        y = np.empty((n, dim))
    local = threading.local()  # each thread's Scratch: its temporaries, reused slice after slice

    def thread_scratch() -> Scratch:
        if not hasattr(local, "scratch"):
            local.scratch = Scratch()
        return local.scratch

    with ThreadPoolExecutor(threads) as pool:
        for k in range(first, last + 1):
            t0 = time.perf_counter()
            # the next rows go into the old ones' buffer unless an earlier iteration is kept in it
            nxt = x if not any(v is x for v in kept.values()) else np.empty((n, dim), dtype=np.float32)

            def multiply(cols, x=x, y=y, pool=None):
                """One slice of post ⊙ (W · (pre ⊙ x)) (+ the residual rows), float64, into ``y``."""
                lo, hi = cols
                part = block_product(merged, x[:, lo:hi], pre, post, out=y[:, lo:hi], scratch=thread_scratch(),
                                     pool=pool, threads=threads)
                if factor:
                    part += _residual_rows(x[:, lo:hi], factor)

            def normalized(lo, hi, part, x=x, nxt=nxt):
                """Rows lo..hi of the products (+ the residual rows), normalised into ``nxt``."""
                if factor:  # (x's rows lo..hi are read before nxt's, which may be the same, are written)
                    part += _residual_rows(x[lo:hi], factor)
                nxt[lo:hi] = normalize_rows(part)

            def scale(span, y=y, nxt=nxt):
                lo, hi = span
                nxt[lo:hi] = normalize_rows(y[lo:hi])

            if by_rows:
                product_by_rows(merged, x, pre, post, normalized, pool=pool, threads=threads,
                                scratch=thread_scratch())
            else:
                if compiled:
                    for cols in columns:
                        multiply(cols, pool=pool)
                else:
                    list(pool.map(multiply, columns))
                list(pool.map(scale, rows))
            x = nxt
            if k in whiten_after:
                x = whiten_array(x).astype(np.float32)
            if k in keep:
                kept[k] = x
            seconds.append(round(time.perf_counter() - t0, 3))
            # progress from inside the task: the executor's stderr (the console in local mode)
            print(f"spark_cleora one-task engine: iteration {k}/{last} of {n} entities in {seconds[-1]:.2f}s",
                  file=sys.stderr, flush=True)
    return kept, seconds, width
