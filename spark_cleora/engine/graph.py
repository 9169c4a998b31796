"""The hypergraph as two tables, never as clique pairs.

pycleora (2.x/3.x) semantics, per hyperedge h with entity multisets A_h and B_h (B_h = A_h for a
reflexive relation), weight w_h = 1/(|A_h|·|B_h|)::

    W = sum_h w_h (a_h b_hᵀ + b_h a_hᵀ)          a_h, b_h = count vectors of A_h, B_h
    D[x] = sum_h a_h[x]/|B_h| + b_h[x]/|A_h|      (pycleora's degree; not the row sum of W in general)
    left = W / D[x],   symmetric = W / sqrt(D[x] D[y])

W is never built: W·X = sum_h w_h (a_h (b_hᵀX) + b_h (a_hᵀX)) needs only per-hyperedge sums of member
vectors, so an iteration costs O(memberships) whatever the hyperedge sizes.

Tables (keyed by ``id`` = Spark ``xxhash64(entity)``, a 64-bit key; collisions are detected):

* ``blocks``: hyperedges are hashed into blocks; per block one *plan* row (its sparse incidence
  matrices and per-hyperedge factors, see :mod:`spark_cleora.engine.propagate`, plus its counts) and one
  *share* row per entity (occurrences and degree share within the block)
* ``entities``: id, entity, column, output, occurrences, degree, blocks (the blocks that need its vector)

Both come out of two shuffles: the raw rows are partitioned by hyperedge once (a partition is a
block; sizes, degree shares and the plan all follow inside it), entities are one aggregate over the
shares. No per-membership table is ever written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..config import Column
from ..errors import EntityHashCollisionError, HyperedgeTooLargeError
from ..storage.task_parquet import TaskParquetTarget, write_task_parquet
from .hyperedges import REJECT as _REJECT
from .hyperedges import ROWS as _ROWS
from .propagate import BlockGroups, _maybe_inject_failure, block_bytes_per_row_dim, group_blocks

log = logging.getLogger(__name__)

MIN_BLOCK_MEMBERSHIPS = 20_000


def default_block_memberships(dim: int, memory_gb: float) -> int:
    """Memberships per block whose working set stays within ``memory_gb`` (a Python worker's budget)."""
    per_membership = max(dim, 1) * block_bytes_per_row_dim(dim)
    return max(MIN_BLOCK_MEMBERSHIPS, int(memory_gb * 2**30) // per_membership)


def choose_num_blocks(n_memberships: int, block_memberships: int, parallelism: int) -> int:
    """Blocks of at most ~``block_memberships`` memberships, spread over up to ``parallelism`` tasks.

    Small graphs get few blocks (each block costs a copy of its entities' vectors), large graphs get
    at least one block per task.
    """
    by_parallelism = min(parallelism, math.ceil(n_memberships / MIN_BLOCK_MEMBERSHIPS))
    return max(1, by_parallelism, math.ceil(n_memberships / block_memberships))


#: ``graph/blocks``: kind 0 = one entity's share of a block (per distinct name key and column), kind 1 =
#: the block's compiled plan with its counts (``entities``: distinct entities in the block), kind 2 =
#: input rows the block's task saw (``rows``) per rule they broke (``entity`` = the rule; null = accepted)
BLOCK_SCHEMA = (
    "kind int, block int, id long, entity string, col int, occurrences double, degree double, "
    "plan binary, memberships long, hyperedges long, largest long, rows long, entities long"
)
ENTITY_PART, PLAN, INPUT_ROWS = 0, 1, 2
#: kind of a row :func:`build_blocks_in_tasks` returns and never writes: a part file its task wrote
#: (``entity`` = the file's name, ``rows`` = its rows)
WRITTEN = 3
BLOCK_ARROW = pa.schema([
    ("kind", pa.int32()), ("block", pa.int32()), ("id", pa.int64()), ("entity", pa.string()), ("col", pa.int32()),
    ("occurrences", pa.float64()), ("degree", pa.float64()), ("plan", pa.binary()), ("memberships", pa.int64()),
    ("hyperedges", pa.int64()), ("largest", pa.int64()), ("rows", pa.int64()), ("entities", pa.int64()),
])
#: rows of one Arrow batch leaving the block builder
_OUT_BATCH = 1 << 16


#: raw rows one graph-building task holds in memory (a block is sorted in numpy as a whole)
PARTITION_ROWS = 4_000_000


def blocks_for(n_rows: int, *, dim: int, block_memberships: int | None, memory_gb: float, parallelism: int) -> int:
    """Blocks for ``n_rows`` raw rows: sized by memory (``block_memberships``, by default what fits
    ``memory_gb``), at least one per core, and no block above ``PARTITION_ROWS`` raw rows (each is sorted
    in one task), rounded up to a multiple of ``parallelism`` where that costs few blocks. Fewer, larger
    blocks copy a popular entity's vector to fewer blocks per iteration."""
    by_memory = choose_num_blocks(n_rows, block_memberships or default_block_memberships(dim, memory_gb),
                                  parallelism)
    n = max(by_memory, math.ceil(n_rows / PARTITION_ROWS))
    # the build runs ``parallelism`` tasks at a time: a multiple of it leaves no core idle in the last
    # wave (10M events on 2 cores: 11 blocks are 6 waves, the last of one task; 12 are 6 full waves of
    # smaller tasks), taken when it adds at most a quarter more blocks (each copies popular vectors)
    whole = math.ceil(n / parallelism) * parallelism
    return whole if n > parallelism and whole * 4 <= n * 5 else n


def _spark_hash_int(k: np.ndarray) -> np.ndarray:
    """Spark's ``hash()`` of int values (Murmur3_x86_32 ``hashInt``, seed 42), as int32: what
    ``repartition(n, col)`` uses to place a row (partition ``pmod(hash, n)``)."""
    with np.errstate(over="ignore"):
        def rotl(x: np.ndarray, r: int) -> np.ndarray:
            return (x << np.uint32(r)) | (x >> np.uint32(32 - r))

        k1 = k.astype(np.uint32) * np.uint32(0xCC9E2D51)
        k1 = rotl(k1, 15) * np.uint32(0x1B873593)
        h1 = np.uint32(42) ^ k1
        h1 = rotl(h1, 13) * np.uint32(5) + np.uint32(0xE6546B64)
        h1 ^= np.uint32(4)
        h1 ^= h1 >> np.uint32(16)
        h1 *= np.uint32(0x85EBCA6B)
        h1 ^= h1 >> np.uint32(13)
        h1 *= np.uint32(0xC2B2AE35)
        h1 ^= h1 >> np.uint32(16)
    return h1.view(np.int32)


def block_keys(num_blocks: int) -> np.ndarray:
    """An id per block such that ``repartition(num_blocks, "block")`` puts block ``i`` (id ``keys[i]``) in
    partition ``i``: the smallest non-negative ints whose Spark hash lands in each partition.

    The iterations of the shuffle engine repartition by block; with ids 0..n-1 the hash would put two
    or three blocks in some partitions and none in others (balls into bins), so some tasks would do
    three blocks' work. With these ids every task gets exactly one block.
    """
    keys = np.full(num_blocks, -1, dtype=np.int64)
    missing, start, step = num_blocks, 0, max(1024, 8 * num_blocks)
    while missing:
        cand = np.arange(start, start + step, dtype=np.int64)
        part = np.mod(_spark_hash_int(cand).astype(np.int64), num_blocks)  # pmod: non-negative
        first = np.unique(part, return_index=True)
        for p, i in zip(*first):
            if keys[p] < 0:
                keys[p] = cand[i]
                missing -= 1
        start += step
    return keys


#: raw columns (and their value) that a caller may leave out of :func:`keyed_memberships` when every row
#: has that value (an event table: one column on one side, no weights, no dedupe): each Arrow column
#: sent to Python costs the JVM's row-to-Arrow conversion, ~0.25 s per 10M rows on 2 cores
RAW_DEFAULTS = {"side": 0, "col": 0, "weight": 1.0, _ROWS: 1}
_RAW_TYPES = {"side": pa.int32(), "col": pa.int32(), "weight": pa.float64()}


def build_blocks(raw: DataFrame, *, reflexive: bool, num_blocks: int, constant: tuple[str, ...] = ()) -> DataFrame:
    """The whole graph in one pass: ``graph/blocks`` rows (see ``BLOCK_SCHEMA``).

    One shuffle puts every hyperedge in one partition, and that partition *is* its block: numpy sorts it
    once, derives multiplicities, hyperedge sizes and degree shares, compiles the block's plan (see
    :func:`spark_cleora.engine.propagate.build_plan`) and emits each entity's share of the block. Nothing
    per-membership is written: the entities come from the shares, the iterations from the plans.
    ``constant``: as in :func:`keyed_memberships`.
    """
    keys = block_keys(num_blocks)

    def build(batches):
        return blocks_of_partition(batches, reflexive=reflexive, keys=keys)

    return keyed_memberships(raw, num_blocks, constant).mapInArrow(build, BLOCK_SCHEMA)


def build_blocks_in_tasks(raw: DataFrame, *, reflexive: bool, num_blocks: int, target: TaskParquetTarget,
                          constant: tuple[str, ...] = ()) -> DataFrame:
    """:func:`build_blocks` with each task writing its ``graph/blocks`` rows itself, one Parquet file per
    partition in ``target.directory`` (:func:`~spark_cleora.storage.task_parquet.write_task_parquet`;
    a retried task replaces its partition's file), returning only the rows that are not entity shares,
    the plans without their blob (what :func:`counts_of_rows` needs, bounded by the blocks), and a
    ``WRITTEN`` row per file for :func:`~spark_cleora.storage.task_parquet.check_task_files`.

    For workers that see the driver's files (a local Spark): the 1.2M share rows and the plans of 10M
    events no longer go from Arrow to Spark rows to Spark's Parquet writer, whose code a fresh JVM
    first runs interpreted (the graph stage 9.8-10.0 s -> 8.0-8.1 s, 2026-11-30)."""
    keys = block_keys(num_blocks)

    def build(batches):
        import pyarrow.compute as pc
        from pyspark import TaskContext

        rows = list(blocks_of_partition(batches, reflexive=reflexive, keys=keys))
        if not rows:
            return
        part = dataclasses.replace(target, write_id=f"{target.write_id}-{TaskContext.get().partitionId():05d}")
        written = write_task_parquet(part, iter(rows), BLOCK_ARROW)
        _maybe_inject_failure("graph build")  # (tests: after the file, which the retry then replaces)
        for b in rows:
            counted = b.filter(pc.not_equal(b.column("kind"), ENTITY_PART))
            if counted.num_rows:  # (RecordBatch.set_column is pyarrow 15+)
                yield pa.RecordBatch.from_arrays(
                    [pa.nulls(counted.num_rows, pa.binary()) if f.name == "plan" else counted.column(f.name)
                     for f in BLOCK_ARROW], schema=BLOCK_ARROW)
        yield pa.RecordBatch.from_pydict({**_nulls(1), "kind": pa.array([WRITTEN], pa.int32()),
                                          "entity": pa.array([part.file_name]),
                                          "rows": pa.array([written], pa.int64())}, schema=BLOCK_ARROW)

    return keyed_memberships(raw, num_blocks, constant).mapInArrow(build, BLOCK_SCHEMA)


def keyed_memberships(raw: DataFrame, num_blocks: int | None, constant: tuple[str, ...] = ()) -> DataFrame:
    """``raw``'s rows with their entity keys, a partition per block: ``num_blocks`` partitions by
    hyperedge, or (``None``) all rows in one partition, block 0 (the one-task engine's small input).

    ``constant``: columns of :data:`RAW_DEFAULTS` that hold their default value on every row of ``raw``
    (the caller knows it, e.g. :func:`~spark_cleora.engine.hyperedges.constant_columns`); they are not
    sent, and :func:`blocks_of_partition` puts the default back. The block is the task's partition.
    """
    if set(constant) - RAW_DEFAULTS.keys():
        raise ValueError(f"constant columns {sorted(set(constant) - RAW_DEFAULTS.keys())}: not in {list(RAW_DEFAULTS)}")
    present = set(raw.columns)
    missing = [c for c in ("h", "side", "col", "entity", "weight") if c not in present and c not in constant]
    if missing:
        raise ValueError(f"raw memberships without {missing} (and not declared constant)")
    # the deferred validation's flags (_reject, _rows) are counted in the build
    send = [c for c in ("h", "side", "col", "entity", "weight", _REJECT, _ROWS) if c in present and c not in constant]
    rows = raw.select(*send)
    rows = rows.repartition(num_blocks, "h") if num_blocks else rows.coalesce(1)
    # the keys are computed after the shuffle (same stage as the numpy pass): fewer bytes to shuffle
    return rows.select(
        *send,
        F.xxhash64("entity").alias("id"),
        # a second, independent hash keeps two names apart even if their 64-bit ids collide, so the
        # collision check in count_entities sees both names
        F.hash("entity").alias("_id2"),
    )


def blocks_of_partition(batches, *, reflexive: bool, keys: np.ndarray | None = None):
    """``mapInArrow`` body: all raw rows of some hyperedges -> entity shares and plans, per block
    (partition ``p`` is block ``keys[p]``, see :func:`block_keys`; without ``keys``, block ``p``; a
    ``block`` column, where given, names each row's partition instead)."""
    batches = [b for b in batches if b.num_rows]
    if not batches:
        return
    t = pa.Table.from_batches(batches)
    if "block" not in t.column_names:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is None:
            raise RuntimeError("blocks_of_partition runs in a Spark task (its partition is the block) or "
                               "is given a block column")
        t = t.append_column("block", pa.array(np.full(t.num_rows, ctx.partitionId(), np.int32)))
    if _REJECT in t.column_names:
        t, counts = _count_input_rows(t)
        yield pa.RecordBatch.from_pydict({
            **_nulls(len(counts)), "kind": pa.array([INPUT_ROWS] * len(counts), pa.int32()),
            "entity": pa.array(list(counts), pa.string()), "rows": pa.array(list(counts.values()), pa.int64()),
        }, schema=BLOCK_ARROW)
        if t.num_rows == 0:
            return
    block = t.column("block").to_numpy()
    for b in np.unique(block):  # one block per partition (the block is the partition id)
        part = t if (block == b).all() else t.filter(pa.array(block == b))
        yield from _one_block(part, int(b if keys is None else keys[b]), reflexive=reflexive)


def _count_input_rows(t: pa.Table) -> tuple[pa.Table, dict[str | None, int]]:
    """Input rows per rule broken (None = accepted), and the accepted raw rows only."""
    import pyarrow.compute as pc

    rule = t.column(_REJECT)
    rows = t.column(_ROWS).to_numpy() if _ROWS in t.column_names else np.ones(t.num_rows, dtype=np.int64)
    ok = pc.is_null(rule).to_numpy(zero_copy_only=False)
    counts: dict[str | None, int] = {None: int(rows[ok].sum())}
    if not ok.all():
        names = np.asarray(rule.filter(pa.array(~ok)).to_pylist(), dtype=object)
        bad_rows = rows[~ok]
        for name in np.unique(names):  # a handful of rules
            counts[str(name)] = int(bad_rows[names == name].sum())
        t = t.filter(pa.array(ok))
    return t, counts


def _nulls(n: int) -> dict[str, pa.Array]:
    return {f.name: pa.nulls(n, f.type) for f in BLOCK_ARROW}


def _one_block(t: pa.Table, block: int, *, reflexive: bool):
    for name, typ in _RAW_TYPES.items():  # left out as constant (keyed_memberships)
        if name not in t.column_names:
            t = t.append_column(name, pa.array(np.full(t.num_rows, RAW_DEFAULTS[name]), typ))
    h = t.column("h").to_numpy()
    side = t.column("side").to_numpy()
    col = t.column("col").to_numpy()
    ids = t.column("id").to_numpy()
    id2 = t.column("_id2").to_numpy()
    fast = _one_column_block(t, block, h, side, col, ids, id2, reflexive=reflexive)
    if fast is not None:
        yield from fast
        return
    yield from _general_block(t, block, h, side, col, ids, id2, reflexive=reflexive)


def _one_column_block(t: pa.Table, block: int, h: np.ndarray, side: np.ndarray, col: np.ndarray, ids: np.ndarray,
                      id2: np.ndarray, *, reflexive: bool) -> list[pa.RecordBatch] | None:
    """:func:`_general_block`'s output for the common block: one column on one side (event tables, a
    reflexive relation) and no two names sharing a 64-bit key in it; None for any other block.

    The entity and hyperedge keys are ranked once (``np.unique``) and a membership is one int64 key
    (hyperedge rank, entity rank): one stable sort instead of a five-key ``lexsort``, and the ranks are
    the plan's indices as they are. Same rows in the same order, same sums (``reduceat``, pairwise) in
    the same order, so the same bytes as the general path.
    """
    if not reflexive or len(h) == 0 or side.min() != side.max() or col.min() != col.max() or side[0] != 0:
        return None
    ids_u, e_rank = np.unique(ids, return_inverse=True)
    key2 = np.empty(len(ids_u), dtype=id2.dtype)
    key2[e_rank] = id2
    if not np.array_equal(key2[e_rank], id2):  # two names under one 64-bit key here: the general path
        return None
    h_u, h_rank = np.unique(h, return_inverse=True)
    key = h_rank.astype(np.int64) * len(ids_u) + e_rank
    order = stable_order(key, len(h_u) * len(ids_u))  # stable: a group's rows keep their order, as in lexsort
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    weight = np.add.reduceat(t.column("weight").to_numpy()[order], starts)  # multiplicity (or summed weight)
    rows = order[starts]
    h_idx, e_idx = h_rank[rows], e_rank[rows]
    n_h, n_e = len(h_u), len(ids_u)
    n_a = np.bincount(h_idx, weights=weight, minlength=n_h)
    d = 2.0 * weight / n_a[h_idx]
    h_rows = np.bincount(h_idx, minlength=n_h)
    from .propagate import compile_plan

    plan = compile_plan(h_idx, e_idx, ids=ids_u, n_h=n_h, weight=weight, side=np.zeros(len(rows), np.int32),
                        reflexive=True)
    # each entity's share of this block: its memberships in the order the general path sums them
    e_order = stable_order(e_idx, n_e)
    e_starts = np.flatnonzero(np.r_[True, np.diff(e_idx[e_order]) != 0])
    shares = _share_rows(t, block, ids=ids_u, name_rows=rows[e_order[e_starts]],
                         col=np.full(n_e, col[0], dtype=np.int32),
                         occurrences=np.add.reduceat(weight[e_order], e_starts),
                         degree=np.add.reduceat(d[e_order], e_starts))
    return [*shares.to_batches(max_chunksize=_OUT_BATCH),
            _plan_row(block, plan, memberships=len(rows), hyperedges=n_h, largest=int(h_rows.max()), entities=n_e)]


def stable_order(key: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(key, kind="stable")`` for integer keys in ``0..bound - 1``: where each key and its
    position fit one int64 together, one sort of those (ties go by position, as a stable sort keeps them;
    numpy's plain sort of int64 is vectorised, its stable argsort is not: 5 ms against 69 ms for the 821k
    memberships of a 10M-event graph's block), else numpy's stable argsort."""
    n = len(key)
    shift = max(1, (n - 1).bit_length())
    if n == 0 or (max(1, bound) - 1).bit_length() + shift > 62:
        return np.argsort(key, kind="stable")
    packed = (key.astype(np.int64) << shift) | np.arange(n, dtype=np.int64)
    packed.sort()
    return packed & ((1 << shift) - 1)


def _share_rows(t: pa.Table, block: int, *, ids, name_rows, col, occurrences, degree) -> pa.Table:
    n = len(ids)
    return pa.table({
        **_nulls(n),  # the plan columns stay null on share rows
        "kind": pa.array(np.full(n, ENTITY_PART, dtype=np.int32)),
        "block": pa.array(np.full(n, block, dtype=np.int32)),
        "id": pa.array(ids),
        "entity": t.column("entity").take(pa.array(name_rows)).cast(pa.string()),
        "col": pa.array(col.astype(np.int32)),
        "occurrences": pa.array(occurrences),
        "degree": pa.array(degree),
    }, schema=BLOCK_ARROW)


def _plan_row(block: int, plan: bytes, *, memberships: int, hyperedges: int, largest: int,
              entities: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({
        **_nulls(1), "kind": pa.array([PLAN], pa.int32()), "block": pa.array([block], pa.int32()),
        "plan": pa.array([plan], pa.binary()), "memberships": pa.array([memberships], pa.int64()),
        "hyperedges": pa.array([hyperedges], pa.int64()), "largest": pa.array([largest], pa.int64()),
        "entities": pa.array([entities], pa.int64()),
    }, schema=BLOCK_ARROW)


def _general_block(t: pa.Table, block: int, h, side, col, ids, id2, *, reflexive: bool):
    from .propagate import build_plan

    order = np.lexsort((id2, ids, col, side, h))  # the last key is the primary one
    h, side, col, ids, id2 = h[order], side[order], col[order], ids[order], id2[order]
    new = np.ones(len(h), dtype=bool)
    new[1:] = (h[1:] != h[:-1]) | (side[1:] != side[:-1]) | (col[1:] != col[:-1]) | (ids[1:] != ids[:-1]) | (
        id2[1:] != id2[:-1])
    starts = np.flatnonzero(new)
    weight = np.add.reduceat(t.column("weight").to_numpy()[order], starts)  # multiplicity (or summed weight)
    rows = order[starts]
    h, side, col, ids, id2 = h[starts], side[starts], col[starts], ids[starts], id2[starts]
    new_h = np.ones(len(h), dtype=bool)
    new_h[1:] = h[1:] != h[:-1]
    h_starts = np.flatnonzero(new_h)
    h_of = np.cumsum(new_h) - 1
    n_a = np.bincount(h_of, weights=np.where(side == 0, weight, 0.0))[h_of]
    if reflexive:
        d = 2.0 * weight / n_a
    else:
        n_b = np.bincount(h_of, weights=np.where(side == 1, weight, 0.0))[h_of]
        d = np.where(side == 0, weight / n_b, weight / n_a)
    h_rows = np.diff(np.r_[h_starts, len(h)])
    plan = build_plan(pa.table({"h": h, "side": side, "id": ids, "weight": weight}), reflexive=reflexive)
    # each entity's share of this block: one row per (name key, column), summed over its hyperedges
    e_order = np.lexsort((col, id2, ids))
    e_new = np.ones(len(e_order), dtype=bool)
    e_new[1:] = (ids[e_order][1:] != ids[e_order][:-1]) | (id2[e_order][1:] != id2[e_order][:-1]) | (
        col[e_order][1:] != col[e_order][:-1])
    e_starts = np.flatnonzero(e_new)
    first = e_order[e_starts]
    shares = _share_rows(t, block, ids=ids[first], name_rows=rows[first], col=col[first],
                         occurrences=np.add.reduceat(weight[e_order], e_starts),
                         degree=np.add.reduceat(d[e_order], e_starts))
    yield from shares.to_batches(max_chunksize=_OUT_BATCH)
    yield _plan_row(block, plan, memberships=len(h), hyperedges=len(h_starts), largest=int(h_rows.max()),
                    entities=len(first))


def plans_of(blocks: DataFrame) -> DataFrame:
    """(block, plan) of every block."""
    return blocks.filter(F.col("kind") == PLAN).select("block", "plan")


def build_entities(blocks: DataFrame, columns: tuple[Column, ...]) -> DataFrame:
    """Entities with their first column (in spec order), output flag, degree and blocks, from the
    entities' per-block shares."""
    col_names = F.array(*[F.lit(c.name) for c in columns])
    outputs = F.array(*[F.lit(not c.transient) for c in columns])
    return (
        blocks.filter(F.col("kind") == ENTITY_PART)
        .groupBy("id")
        .agg(
            F.min("entity").alias("entity"),
            F.max("entity").alias("_entity_max"),
            F.min("col").alias("_col"),
            F.max(F.element_at(outputs, F.col("col") + 1)).alias("output"),
            F.sum("occurrences").alias("occurrences"),
            F.sum("degree").alias("degree"),
            # (cast: the iterations' schema declares nullable elements)
            F.array_sort(F.collect_set("block")).cast("array<int>").alias("blocks"),
        )
        .withColumn("column", F.element_at(col_names, F.col("_col") + 1))
        .drop("_col")
    )


def count_entities(entities: DataFrame) -> int:
    """Number of entities; raises if two names share a key (checked in the same pass)."""
    row = entities.agg(
        F.count(F.lit(1)).alias("n"), F.sum((F.col("entity") != F.col("_entity_max")).cast("long")).alias("bad")
    ).collect()[0]
    if row["bad"]:
        bad = entities.filter(F.col("entity") != F.col("_entity_max")).limit(3).collect()
        pairs = ", ".join(f"{r['entity']!r} vs {r['_entity_max']!r}" for r in bad)
        raise EntityHashCollisionError(f"different entity names share a 64-bit key ({pairs}); rename one of them")
    return int(row["n"])


@dataclass
class GraphCounts:
    memberships: int
    hyperedges: int
    largest: int  # raw rows of the largest hyperedge
    shares: int  # entity share rows, i.e. the blocks' entity counts summed (>= the number of entities)
    input_rows: dict[str | None, int]  # per rule broken, None = accepted (deferred validation only)
    #: (block, memberships, hyperedges, entities) of every block: what sizes the iterations' block groups
    blocks: tuple[tuple[int, int, int, int], ...] = ()


def graph_counts(blocks: DataFrame) -> GraphCounts:
    """The plan rows' counts and the input-row counts of written blocks, in one small aggregate (the
    aggregates of :func:`graph_count_metrics`, for blocks whose write was not observed)."""
    return observed_counts(blocks.agg(*graph_count_metrics()).first().asDict())


def graph_count_metrics() -> list[SparkColumn]:
    """The graph's counts as aggregates, for ``DataFrame.observe`` on the blocks while they are written
    (the counts come with the write, without a job of their own) or for :func:`graph_counts`. Read back
    with :func:`observed_counts`.

    One aggregate: the rows that are not entity shares (a plan row per block, a row per block and rule
    broken), bounded by the blocks, not the data; the driver sums them. Every written row passes through
    the observed aggregates, and six of them (the sums and lists apart) cost 1.5 s more than this one on
    the 1.2M share rows of 10M events. As JSON text, because Spark 4.0's Observation hands an array of
    structs back as raw Java objects."""
    counted = F.when(F.col("kind") != ENTITY_PART, F.struct(
        "kind", "block", F.col("entity").alias("rule"), "rows", "memberships", "hyperedges", "largest", "entities"))
    return [F.to_json(F.collect_list(counted)).alias("counted")]


def observed_counts(metrics: dict) -> GraphCounts:
    """The :class:`GraphCounts` of :func:`graph_count_metrics`' observed row."""
    return counts_of_rows(json.loads(metrics.get("counted") or "[]"))


def counts_of_rows(rows: list[dict]) -> GraphCounts:
    """The :class:`GraphCounts` of the ``graph/blocks`` rows that are not entity shares, as dicts (the
    broken rule of an input-row count under ``rule``, or under ``entity``, its column)."""
    inputs: dict[str | None, int] = {}
    m = h = big = shares = 0
    sizes = []
    for r in rows:
        r = {"rule": r.get("entity"), **r}
        # (to_json leaves NULL fields out: a missing rule is the accepted rows' None)
        if r["kind"] == INPUT_ROWS:
            inputs[r.get("rule")] = inputs.get(r.get("rule"), 0) + int(r.get("rows") or 0)
        elif r["kind"] == PLAN:
            m, h, shares = m + int(r["memberships"]), h + int(r["hyperedges"]), shares + int(r["entities"])
            big = max(big, int(r["largest"]))
            sizes.append((int(r["block"]), int(r["memberships"]), int(r["hyperedges"]), int(r["entities"])))
    return GraphCounts(m, h, big, shares, inputs, tuple(sorted(sizes)))


#: relative standard deviation of :func:`estimate_entities`
ENTITIES_RSD = 0.01


def block_groups(counts: GraphCounts, num_blocks: int, *, entities: int | None, dim: int, memory_gb: float,
                 parallelism: int, two_sided: bool) -> BlockGroups:
    """The groups of blocks an iteration of the shuffle engine multiplies (see
    :func:`~spark_cleora.engine.propagate.group_blocks`), from the blocks' sizes measured when the graph
    was built; a graph prepared by an older version has none, and every block is on its own."""
    keys = block_keys(num_blocks)
    if not counts.blocks:
        return BlockGroups({int(k): int(k) for k in keys}, num_blocks)
    by_id = {b: (m, h, e) for b, m, h, e in counts.blocks}
    sizes = np.array([by_id.get(int(k), (0, 0, 0)) for k in keys], dtype=np.int64)  # (a block may be empty)
    group = group_blocks(sizes, entities=entities, dim=dim, memory_gb=memory_gb, parallelism=parallelism,
                         two_sided=two_sided)
    group_keys = block_keys(int(group.max()) + 1)
    return BlockGroups({int(k): int(group_keys[g]) for k, g in zip(keys, group)}, len(group_keys))


def estimate_entities(blocks: DataFrame) -> int:
    """Distinct entities, estimated (HyperLogLog, within ~1%) from the share rows: one pass over the ids,
    without the entities' aggregate."""
    row = blocks.filter(F.col("kind") == ENTITY_PART).agg(F.approx_count_distinct("id", ENTITIES_RSD)).first()
    return int(row[0] or 0)


def check_hyperedge_fits(largest_rows: int, dim: int, memory_gb: float) -> None:
    """A hyperedge lives in one block, so its rows x dim must fit one worker's block memory.

    Raises with the numbers and the ways out instead of letting a Python worker die of memory.
    """
    need = largest_rows * dim * block_bytes_per_row_dim(dim)  # its block has at least its members' rows
    if need > memory_gb * 2**30:
        raise HyperedgeTooLargeError(
            f"the largest hyperedge has {largest_rows:,} distinct members; at dim {dim} its block needs "
            f"~{need / 2**30:.1f} GiB in one Python worker, above --block-memory-gb {memory_gb:g}. Raise "
            "--block-memory-gb (and the executors' memory), lower --dim, or split such hyperedges (e.g. "
            "sessions with --timestamp/--session-gap)."
        )
