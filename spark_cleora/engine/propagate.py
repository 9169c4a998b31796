"""One Cleora iteration: X <- rownorm(M X), as a join-and-aggregate on Spark.

Block routing (as Spark's ALS does): hyperedges are hashed into blocks; each block's memberships are
compiled once into a *plan* (its sparse incidence matrices, one binary row per block), so an iteration
shuffles the vectors and a handful of plan rows, never the memberships. An iteration's multiply tasks
each take a *group* of neighbouring blocks (:func:`group_blocks`: as few as fit a worker, at least as
many as the task slots or shuffle partitions, whichever is fewer), and each entity vector is sent once to every group that has one of its hyperedges (not
once per membership). A Python worker then multiplies its group, the plans merged into one, as sparse
products (numba's compiled loops of :mod:`~spark_cleora.engine.product_kernels` where numba is installed,
else scipy's kernels; the same sums):

    S_A = A X,  S_B = B X               per-hyperedge sums of member vectors (A, B: h x e counts)
    Y   = Aᵀ (w ⊙ S_B) + Bᵀ (w ⊙ S_A)    each member gets w_h times the other side's sum

and emits one partial vector per (entity, group). A second step, partitioned by entity, sums the
partials of each entity (:func:`sum_runs`) and L2-normalises the rows. Vectors travel packed (see
:mod:`spark_cleora.engine.vectors`) and are stored float32; the products' sums are float32 runs of at
most ``F32_TERMS`` terms added in float64 (:func:`block_product`), everything else is float64.

The embedding table carries each entity's *route* next to its vector (``X_SCHEMA``: the blocks that
need it and its Markov scalings), and both steps pass the route through, so an iteration is
``explode(groups of blocks)`` -> shuffle by group -> multiply -> shuffle by entity -> sum: no join with
a routing table, and the table an iteration writes is the next one's input as it is.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy import sparse

try:  # scipy's compiled sparse kernels (see _sparse_product)
    from scipy.sparse import _sparsetools
except ImportError:  # pragma: no cover - a scipy that moved them: the public product
    _sparsetools = None

from .compiled import load_compiled
from .vectors import PACKED, pack, to_list_array, unpack

log = logging.getLogger(__name__)

#: the embedding table during the iterations: vector plus route (see the module docstring)
X_SCHEMA = f"id long, pre double, post double, blocks array<int>, vec {PACKED}"
X_SCHEMA_COLUMNS = tuple(field.split()[0] for field in X_SCHEMA.split(", "))
_NOT_ROUTE = ("block", "vec")
NORM_EPS = 1e-10  # pycleora 3.x: x / max(||x||, 1e-10); an all-zero row stays zero
#: a shuffle-engine task works on this many dimensions at a time: its float64 temporaries are a slice
#: of the rows, not whole rows (measured on a 1.5M-membership block at dim 256: 1.0 s in slices of 64
#: vs 1.7 s whole, the slices staying in cache). Each column's sums are the same either way.
SLICE_COLUMNS = 64


def block_bytes_per_row_dim(dim: int) -> int:
    """Bound on a shuffle-engine task's working set per row and dimension (rows: the block's memberships,
    or the entity sum's partial rows; a block has at most as many entities or hyperedges as memberships).

    Multiply: the packed input as Spark's batches and combined into one buffer (4 + 4), the float32
    product (4), and per slice of ``SLICE_COLUMNS`` the gathered float32 rows, their float64 copy, the
    per-hyperedge sums of both sides and two float64 products (4 + 8 + 16 + 16). Entity sum: the packed
    input twice (4 + 4), the float64 sums (8), the packed output (4), and per slice the gathered float32
    rows, their float64 copy and their float64 sums (4 + 8 + 8).
    """
    share = min(dim, SLICE_COLUMNS) / max(dim, 1)
    return math.ceil(max(12 + 44 * share, 20 + 20 * share))


#: a multiply task's plan bytes per membership, at the most while the float32 runs are cut
#: (:func:`prepare_plan`): the plan's Arrow value and its Python bytes (12 + 12), the loaded CSR arrays
#: (8-byte weight + 4-byte index) or, for a group, their merged copy (24 while both exist), the runs (a
#: float32 value and an int32 index in the row runs and in the column runs: 16) and the cutting's own
#: temporaries (the column-major positions, ranks, pieces and new indices: 44)
PLAN_BYTES_PER_MEMBERSHIP = 108
#: a serialised plan's bytes per membership (8-byte weight, 4-byte entity index), and the most a group's
#: plans may hold together (they share the partition's Arrow batches with the vectors)
PLAN_BLOB_BYTES_PER_MEMBERSHIP, MAX_GROUP_PLAN_BYTES = 12, 2**30


def group_bytes(*, entities: Any, hyperedges: Any, memberships: Any, dim: int, two_sided: bool = True) -> Any:
    """Bound on the working set of a multiply task that holds these entities, hyperedges and memberships
    (one block, or a group of blocks merged): the routed float32 vectors as Arrow batches, combined, and
    the float32 product (12 bytes per entity and dimension); per slice of ``SLICE_COLUMNS`` the gathered
    rows and the products of :func:`block_product` (28 per entity with two sides, 20 with one: the
    gathered rows, the runs' products and one or two float64 products, 24 and 16, and the float64 sums
    of the columns with several runs) beside the per-hyperedge sums and runs (20 with two sides, 12 with
    one: the runs' products and each side's float32 sums, 12 and 8, and the rows with several runs);
    and the plans
    (``PLAN_BYTES_PER_MEMBERSHIP``). Ints or numpy arrays."""
    width = min(dim, SLICE_COLUMNS)
    per_slice = entities * (28 if two_sided else 20) + hyperedges * (20 if two_sided else 12)
    return entities * dim * 12 + width * per_slice + memberships * PLAN_BYTES_PER_MEMBERSHIP


def group_blocks(sizes: np.ndarray, *, entities: int | None, dim: int, memory_gb: float, parallelism: int,
                 two_sided: bool = True) -> np.ndarray:
    """The iterations' multiply tasks: for each block (rows of ``sizes``: memberships, hyperedges and
    entities of block ``i``, in block order) the group it is multiplied in, ``0..G-1``.

    The graph's blocks are cut before their sizes are known, so their count assumes the worst case (as
    many entities and hyperedges as memberships). Their real sizes are known once they are built: the
    fewest groups of neighbouring blocks (but at least ``parallelism``, the tasks that run at once) whose bound
    (:func:`group_bytes`, a group's entities taken as the sum of its blocks', at most all ``entities``)
    fits ``memory_gb``. Each group is one task, and an entity's vector is sent once per group rather
    than once per block: at 10M events, 11 blocks routed 1.2M vectors per iteration, 2 groups 0.59M.
    """
    n = len(sizes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    budget = memory_gb * 2**30
    index = np.arange(n)
    sizes = np.asarray(sizes, dtype=np.int64)
    for g in range(max(1, min(parallelism, n)), n + 1):
        group = index * g // n
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        m, h, e = (np.add.reduceat(sizes[:, c], starts) for c in range(3))
        if entities is not None:
            e = np.minimum(e, entities)
        need = group_bytes(entities=e, hyperedges=h, memberships=m, dim=dim, two_sided=two_sided)
        # a group's plans travel in the partition's Arrow batches beside its vectors: far below Arrow's
        # 2 GiB per binary column, whatever the budget
        if need.max() <= budget and (m * PLAN_BLOB_BYTES_PER_MEMBERSHIP).max() <= MAX_GROUP_PLAN_BYTES:
            return group
    log.warning("no grouping of the %d blocks fits %.1f GiB per task: each is multiplied on its own", n, memory_gb)
    return index


@dataclass(frozen=True)
class BlockGroups:
    """Which blocks each multiply task of an iteration takes: ``group_of`` maps a block id to its group's
    id (ids of :func:`spark_cleora.engine.graph.block_keys` for ``count`` partitions, so that each group is
    a partition of its own)."""

    group_of: dict[int, int]
    count: int


FAIL_SWITCH = "SPARK_CLEORA_TEST_FAIL_FIRST_ATTEMPT"


def _maybe_inject_failure(where: str) -> None:
    """Test-only switch: with ``SPARK_CLEORA_TEST_FAIL_FIRST_ATTEMPT=1`` in the workers' environment, the
    first attempt of every even-numbered task fails, so tests can show that retries change nothing."""
    if os.environ.get(FAIL_SWITCH) != "1":
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.attemptNumber() == 0 and ctx.partitionId() % 2 == 0:
        raise RuntimeError(f"injected failure in {where} (partition {ctx.partitionId()}, {FAIL_SWITCH}=1)")


def _empty(dim: int, like: pa.Table) -> pa.Table:
    """No rows, with the pass-through columns of ``like``."""
    keep = [n for n in like.column_names if n not in _NOT_ROUTE]
    return like.select(keep).slice(0, 0).append_column("vec", pack(np.zeros((0, dim), dtype=np.float32)))


def build_plan(members: pa.Table, *, reflexive: bool) -> bytes:
    """Compile one block's memberships ``(h, side, id, weight)`` into its sparse matrices, once.

    The plan holds the block's entity ids (sorted), the incidence matrices A (and B) as CSR over
    (hyperedge, entity), and the per-hyperedge factor w_h (2/|A|² reflexive, 1/(|A||B|) otherwise), so
    an iteration only multiplies. Serialised with ``np.savez`` (uncompressed) into one binary value.
    """
    ids_all = members.column("id").to_numpy()
    ids = np.unique(ids_all)
    e_idx = np.searchsorted(ids, ids_all)
    _, h_idx = np.unique(members.column("h").to_numpy(), return_inverse=True)
    n_h = int(h_idx.max()) + 1 if len(h_idx) else 0
    return compile_plan(h_idx, e_idx, ids=ids, n_h=n_h, weight=members.column("weight").to_numpy(),
                        side=members.column("side").to_numpy(), reflexive=reflexive)


def compile_plan(h_idx: np.ndarray, e_idx: np.ndarray, *, ids: np.ndarray, n_h: int, weight: np.ndarray,
                 side: np.ndarray, reflexive: bool) -> bytes:
    """:func:`build_plan` from memberships already indexed: ``h_idx`` (hyperedge, 0..n_h-1 in hyperedge
    order), ``e_idx`` (position in the sorted ``ids``)."""
    n_e = len(ids)
    weight = weight.astype(np.float64)

    def incidence(mask: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix((weight[mask], (h_idx[mask], e_idx[mask])), shape=(n_h, n_e))

    mats = {"a": incidence(side == 0)}
    n_a = np.asarray(mats["a"].sum(axis=1)).ravel()
    if reflexive:
        scale = 2.0 / (n_a * n_a)
    else:
        mats["b"] = incidence(side == 1)
        scale = 1.0 / (n_a * np.asarray(mats["b"].sum(axis=1)).ravel())
    arrays = {"ids": ids, "scale": scale}
    for name, m in mats.items():
        arrays.update({f"{name}_indptr": m.indptr, f"{name}_indices": m.indices, f"{name}_data": m.data})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_plan(blob: bytes | pa.Buffer) -> dict[str, Any]:
    """A compiled plan's arrays (and its matrices) from its bytes, or from the Arrow buffer of its value
    in a binary column (``scalar.as_buffer()``: read where it lies, not copied into a ``bytes`` first)."""
    with np.load(pa.BufferReader(blob)) as z:
        arrays = {k: z[k] for k in z.files}
    n_e, n_h = len(arrays["ids"]), len(arrays["scale"])
    for name in ("a", "b"):
        if f"{name}_indptr" in arrays:
            arrays[name] = sparse.csr_matrix(
                (arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]), shape=(n_h, n_e))
    return arrays


def multiply_block(routed: pa.Table, plan: pa.Table, *, dim: int) -> pa.Table:
    """Multiply one block, or a group of blocks: routed vectors ``(id, pre, post, [route...], vec)`` x the
    compiled ``plan`` rows (one per block; with several, ordered by their ``part`` column, and merged
    into one plan with :func:`merge_plans`) -> one partial ``(id, ..., vec)`` per entity (other columns
    pass through)."""
    if routed.num_rows == 0 or plan.num_rows == 0:
        return _empty(dim, routed)
    ids = routed.column("id").to_numpy()
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if plan.num_rows == 1:
        p = load_plan(plan.column("plan")[0].as_buffer())
        known = p["ids"]
    else:  # the blocks' hyperedges stacked in block order, over the group's entities
        blobs = plan.column("plan")
        ranks = (pc.sort_indices(plan, sort_keys=[("part", "ascending")]).to_pylist() if "part" in plan.column_names
                 else range(plan.num_rows))  # (an index: the blobs are not copied)
        loaded = [load_plan(blobs[int(i)].as_buffer()) for i in ranks]
        known = np.unique(np.concatenate([q["ids"] for q in loaded]))
        if np.array_equal(ids, known):
            p = merge_plans([(q, np.searchsorted(ids, q["ids"])) for q in loaded], len(ids))
        del loaded
    if not np.array_equal(ids, known):  # routes and plans come from the same memberships
        raise RuntimeError(f"block plan and routed vectors disagree ({len(known)} vs {len(ids)} entities)")
    x = unpack(routed.column("vec"), dim)
    pre, post = routed.column("pre").to_numpy()[order], routed.column("post").to_numpy()[order]
    prepare_plan(p, drop=True)
    y = np.empty((len(order), dim), dtype=np.float32)
    scratch = Scratch()  # float64 temporaries for a slice of the dimensions at a time, reused
    for lo in range(0, dim, SLICE_COLUMNS):
        y[:, lo:lo + SLICE_COLUMNS] = block_product(p, x[order, lo:lo + SLICE_COLUMNS], pre, post, scratch=scratch)
    keep = [n for n in routed.column_names if n not in _NOT_ROUTE]
    return routed.select(keep).take(pa.array(order)).append_column("vec", pack(y))


def merge_plans(plans: list[tuple[dict, np.ndarray]], n: int) -> dict:
    """Several blocks' plans as one plan over ``n`` entities (the shape :func:`load_plan` returns), each
    given with its entities' indices among the ``n``: incidence matrices A (and B) over (hyperedge, entity
    index) and the per-hyperedge factors, hyperedges stacked block after block."""
    def stack(name: str):
        mats = [sparse.csr_matrix((p[name].data, g[p[name].indices], p[name].indptr), shape=(p[name].shape[0], n))
                for p, g in plans]
        return sparse.vstack(mats, format="csr") if mats else sparse.csr_matrix((0, n))

    merged = {"a": stack("a"), "scale": np.concatenate([p["scale"] for p, _ in plans]) if plans else np.zeros(0)}
    if plans and "b" in plans[0][0]:
        merged["b"] = stack("b")
    return merged


def split_block_rows(batches) -> tuple[pa.Table | None, pa.Table]:
    """One partition of the multiply step (one block or group: its routed vectors and its plan rows, in
    any order) -> (vectors, plans); a partition without vectors -> (None, ...)."""
    vectors, plans = [], []
    for b in batches:
        if not b.num_rows:
            continue
        is_plan = b.column("plan").is_valid()
        n_plans = pc.sum(is_plan).as_py() or 0
        if n_plans:
            plans.append(b.filter(is_plan).select(["part", "plan"]))
        if n_plans < b.num_rows:
            rows = b.filter(pc.invert(is_plan)) if n_plans else b
            vectors.append(rows.drop_columns(["plan", "part"]))
    plan = pa.Table.from_batches(plans) if plans else pa.table({"part": pa.array([], pa.int32()),
                                                               "plan": pa.array([], pa.binary())})
    return (pa.Table.from_batches(vectors) if vectors else None), plan


#: terms per float32 sum in the products (:func:`block_product`): a hyperedge's row or an entity's column
#: is cut into runs of at most this many memberships, each run summed in float32, the runs added in
#: float64. A sum's rounding error is then at most ~(F32_TERMS + 1)·2⁻²⁴ (~4e-6) of the sum of its terms'
#: magnitudes, whatever the hyperedge's size or the entity's degree (a whole-row float32 sum's bound grows
#: with its length: a 200k-entity hyperedge's was off by 1e-3). Measured on the 10M-event bench graph
#: (8M memberships, slices of 64 columns): 1.6 s per slice in float64, 1.2 s this way.
F32_TERMS = 64


def block_product(plan: dict[str, Any], x: np.ndarray, pre: np.ndarray, post: np.ndarray,
                  out: np.ndarray | None = None, scratch: Scratch | None = None,
                  pool: Executor | None = None, threads: int = 1) -> np.ndarray:
    """One block's contribution ``post ⊙ (W_block · (pre ⊙ x))`` in float64, rows in the plan's id order
    (``x``: the block's entity vectors in that order). Shared by both engines (the one-task engine passes
    all blocks merged into one plan). ``out``: a float64 array of the result's shape to write it into
    (returned), instead of a new one; ``scratch``: the calling thread's :class:`Scratch`, whose arrays
    then hold the temporaries, reused from call to call (and, without ``out``, the result: use it before
    the next call). ``pool`` (with ``threads`` threads): where the compiled loops' ranges of rows run side
    by side (scipy's path runs in the calling thread: its callers hand slices of the dimensions to threads).

    The sums are float32 runs of at most ``F32_TERMS`` terms added in float64 (:func:`prepare_plan`, done
    here once per plan unless done before); the scalings and the per-hyperedge factors are applied in
    float64, and each column's arithmetic does not depend on the slice it is in nor on the path."""
    form = prepare_plan(plan)
    scratch = scratch if scratch is not None else Scratch()
    x32 = _scaled_rows(x, pre, scratch)
    if "kernels" in plan:
        return _compiled_product(form, plan["scale"], x32, post, out, scratch, pool, threads)
    scale = plan["scale"][:, None]
    # per-hyperedge sums, scaled in float64 and rounded to float32 for the second product
    s_a = _scaled_sums(form["a_rows"], x32, scale, scratch.array("s_a", (len(scale), x32.shape[1]), np.float32),
                       scratch)
    if "b_rows" in form:
        s_b = _scaled_sums(form["b_rows"], x32, scale, scratch.array("s_b", s_a.shape, np.float32), scratch)
        y = _run_sums(form["a_cols"], s_b, transpose=True, out=out, scratch=scratch, name="y")
        y += _run_sums(form["b_cols"], s_a, transpose=True, scratch=scratch, name="y_b")
    else:
        y = _run_sums(form["a_cols"], s_a, transpose=True, out=out, scratch=scratch, name="y")
    y *= post[:, None]
    return y


def _compiled_product(kernels: dict, scale: np.ndarray, x32: np.ndarray, post: np.ndarray, out: np.ndarray | None,
                      scratch: Scratch, pool: Executor | None, threads: int) -> np.ndarray:
    """:func:`block_product` by numba's loops (:mod:`~spark_cleora.engine.product_kernels`): the hyperedges'
    scaled float32 sums, then the entities' float64 sums over them, each over ranges of rows (of about
    equal memberships, a few per thread) run on ``pool``'s threads."""
    y = out if out is not None else scratch.array("y", (len(x32), x32.shape[1]), np.float64)
    sums = _hyperedge_sums(kernels, scale, x32, scratch, pool, threads)
    _on_spans(lambda lo, hi: _entity_sums(kernels, sums, post, lo, hi, y[lo:hi]), _entity_indptr(kernels), pool,
              threads)
    return y


#: entities summed into a thread's float64 buffer at a time by :func:`product_by_rows` (2 MB at dim 256)
ROWS_AT_ONCE = 1024


def product_by_rows(plan: dict[str, Any], x: np.ndarray, pre: np.ndarray, post: np.ndarray,
                    consume: Callable[[int, int, np.ndarray], None], *, pool: Executor | None = None,
                    threads: int = 1, scratch: Scratch | None = None) -> None:
    """:func:`block_product`'s float64 rows (whole rows of ``x``), handed to ``consume(lo, hi, rows)`` a range
    of at most ``ROWS_AT_ONCE`` entities at a time as soon as they are summed, instead of kept: ``rows``
    is a buffer of the calling thread's, valid during the call (the one-task engine normalises each range
    into its float32 rows there, with no float64 array as large as the vectors). Numba's loops only: a
    plan prepared with them (:func:`prepare_plan`). The ranges run on ``pool``'s threads; ``x`` may be
    overwritten row by row in ``consume`` (the entities' sums read the hyperedges' sums only)."""
    if "kernels" not in plan:
        raise ValueError("product_by_rows: the plan is not prepared for the compiled loops")
    kernels, scratch = plan["kernels"], scratch if scratch is not None else Scratch()
    sums = _hyperedge_sums(kernels, plan["scale"], _scaled_rows(x, pre, scratch), scratch, pool, threads)
    local = threading.local()  # each thread's buffer of ROWS_AT_ONCE float64 rows

    def entity_rows(lo: int, hi: int) -> None:
        if not hasattr(local, "rows"):
            local.rows = np.empty((ROWS_AT_ONCE, x.shape[1]))
        for a in range(lo, hi, ROWS_AT_ONCE):
            b = min(hi, a + ROWS_AT_ONCE)
            consume(a, b, _entity_sums(kernels, sums, post, a, b, local.rows[:b - a]))

    _on_spans(entity_rows, _entity_indptr(kernels), pool, threads)



def _scaled_rows(x: np.ndarray, pre: np.ndarray, scratch: Scratch) -> np.ndarray:
    """``pre ⊙ x`` as float32 C-contiguous rows for the products (``x`` as it is when it is such and ``pre``
    is 1, the left Markov case); float64 products rounded to float32."""
    x = np.asarray(x, dtype=np.float32)
    if not np.all(pre == 1.0):
        return np.multiply(x, pre[:, None], out=scratch.array("x", x.shape, np.float32), casting="same_kind")
    if not x.flags.c_contiguous:  # (a slice of wider rows) the sparse kernels read whole rows of it
        x32 = scratch.array("x", x.shape, np.float32)
        np.copyto(x32, x)
        return x32
    return x


def _hyperedge_sums(kernels: dict, scale: np.ndarray, x32: np.ndarray, scratch: Scratch, pool: Executor | None,
                    threads: int) -> list[np.ndarray]:
    """Each side's ``scale ⊙ (M x32)`` rounded to float32 (numba's loops), in ``scratch``."""
    k = compiled_products()
    sums = []
    for side in ("a", "b"):
        if side in kernels:
            m, s = kernels[side]["rows"], scratch.array(f"s_{side}", (len(scale), x32.shape[1]), np.float32)
            _on_spans(lambda lo, hi, m=m, s=s: k.scaled_run_sums(lo, hi, F32_TERMS, *m, x32, 0, x32.shape[1],
                                                                   scale, s, 0), m[0], pool, threads)
            sums.append(s)
    return sums


def _entity_indptr(kernels: dict) -> np.ndarray:
    """The entities' memberships as one CSR index (both sides'), to cut their ranges by."""
    columns = [kernels[side]["columns"][0] for side in ("a", "b") if side in kernels]
    return columns[0] if len(columns) == 1 else columns[0] + columns[1]


def _entity_sums(kernels: dict, sums: list[np.ndarray], post: np.ndarray, lo: int, hi: int,
                 out: np.ndarray) -> np.ndarray:
    """Entities ``lo..hi`` of ``post ⊙ (Aᵀ s_a)`` (one side) or ``post ⊙ (Aᵀ s_b + Bᵀ s_a)`` in float64,
    into ``out`` (their rows; returned)."""
    k = compiled_products()
    if "b" not in kernels:
        k.scaled_run_sums(lo, hi, F32_TERMS, *kernels["a"]["columns"], sums[0], 0, sums[0].shape[1], post, out, lo)
    else:  # each entity gets A's sums over B's side and B's over A's
        k.two_sided_column_sums(lo, hi, F32_TERMS, *kernels["a"]["columns"], sums[1], *kernels["b"]["columns"],
                                sums[0], post, out, lo)
    return out


def _on_spans(task: Callable[[int, int], None], indptr: np.ndarray, pool: Executor | None, threads: int) -> None:
    """``task(lo, hi)`` over ranges of rows of a CSR index of about equal entries, a few per thread on
    ``pool`` (one range without it)."""
    spans = _spans(indptr, 1 if pool is None else 4 * max(1, threads))
    if pool is None or len(spans) == 1:
        for lo, hi in spans:
            task(lo, hi)
    else:
        list(pool.map(lambda span: task(*span), spans))


def _spans(indptr: np.ndarray, pieces: int) -> list[tuple[int, int]]:
    """At most ``pieces`` ranges of rows that cover a CSR matrix's rows, of about equal entries each."""
    n = len(indptr) - 1
    cuts = np.searchsorted(indptr, np.linspace(0, indptr[-1], pieces + 1)[1:-1])
    bounds = np.unique(np.r_[0, np.clip(cuts, 0, n), n])
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])] or [(0, n)]


class Scratch:
    """One thread's reusable temporaries: an array per name, grown when a call needs more, handed out as
    views. A product's temporaries are as large as the vectors; allocated fresh for every slice, each
    costs page faults on its first touch (on this machine's VM up to a third of the product's time went
    to the kernel); reused, they cost nothing after the first slice."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised ``shape`` array of ``dtype`` under ``name`` (the previous one's memory: one
        array per name is live at a time)."""
        size = math.prod(shape)
        dtype = np.dtype(dtype)
        have = self._arrays.get(name)
        if have is None or have.dtype != dtype or have.size < size:
            self._arrays.pop(name, None)  # (freed before the larger one is made)
            have = self._arrays[name] = np.empty(size, dtype=dtype)
        return have[:size].reshape(shape)

    def zeros(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """:meth:`array`, filled with zeros."""
        a = self.array(name, shape, dtype)
        a.fill(0)
        return a


def prepare_plan(plan: dict[str, Any], *, drop: bool = False, compiled: bool | None = None) -> dict[str, Any]:
    """The form ``plan``'s products run on, computed once and kept in the plan; ``drop``: then remove the
    float64 matrices from the plan (its owner's memory). ``compiled``: numba's loops
    (:mod:`~spark_cleora.engine.product_kernels`, key ``"kernels"``) or scipy's (key ``"runs"``); by default
    the loops where numba is installed and the plan has at least ``COMPILED_MIN_MEMBERSHIPS``
    memberships. The same sums either way.

    scipy's form: for ``M x`` (a hyperedge's sum over its members) each row of M cut into consecutive
    sub-rows of at most ``F32_TERMS`` entries; for ``Mᵀ s`` (an entity's sum over its hyperedges) each
    column cut, in hyperedge order, into sub-columns (:class:`_Runs`). The loops' form: M with float32
    values and its transpose (each entity's hyperedges in order), cut into runs as they go."""
    if "runs" not in plan and "kernels" not in plan:
        if compiled is None:
            compiled = _memberships(plan) >= COMPILED_MIN_MEMBERSHIPS
        if compiled and compiled_products() is not None:
            plan["kernels"] = {name: _kernel_matrices(plan[name].tocsr()) for name in ("a", "b") if name in plan}
        else:
            runs = {}
            for name in ("a", "b"):
                if name in plan:
                    m = plan[name].tocsr()
                    runs[f"{name}_rows"] = _row_runs(m, F32_TERMS)
                    runs[f"{name}_cols"] = _column_runs(m, F32_TERMS)
            plan["runs"] = runs
    if drop:  # the matrices and the arrays load_plan built them on (they share memory)
        for name in ("a", "b"):
            for key in (name, f"{name}_data", f"{name}_indices", f"{name}_indptr"):
                plan.pop(key, None)
    return plan["kernels"] if "kernels" in plan else plan["runs"]


#: memberships from which a plan's products run as numba's loops (:func:`prepare_plan`): importing numba and
#: loading them (~0.3 s where nothing else has) is repaid from about here (at 1M events, 0.78M memberships,
#: both paths took the same time end to end on 2026-11-30)
COMPILED_MIN_MEMBERSHIPS = 1 << 18


def _memberships(plan: dict[str, Any]) -> int:
    return sum(plan[name].nnz for name in ("a", "b") if name in plan)


@functools.cache
def compiled_products() -> ModuleType | None:
    """:mod:`spark_cleora.engine.product_kernels` (numba's compiled loops), loaded (or compiled) here; None
    without numba, or with one that cannot compile on this machine (scipy's path then gives the same
    numbers)."""
    def warm(k: ModuleType) -> None:
        m = _kernel_matrices(sparse.csr_matrix(np.ones((1, 1))))
        x, one = np.zeros((1, 1), dtype=np.float32), np.ones(1)
        s, y = np.empty((1, 1), dtype=np.float32), np.empty((1, 1))
        k.scaled_run_sums(0, 1, F32_TERMS, *m["rows"], x, 0, 1, one, s, 0)  # (float32 out: the hyperedges')
        k.scaled_run_sums(0, 1, F32_TERMS, *m["columns"], s, 0, 1, one, y, 0)  # (float64 out: the entities')
        k.two_sided_column_sums(0, 1, F32_TERMS, *m["columns"], s, *m["columns"], s, one, y, 0)

    return load_compiled("product_kernels", warm, "the products' loops")


def _kernel_matrices(m: sparse.csr_matrix) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The loops' form of one incidence matrix: (indptr, indices, float32 values) of M, rows in their stored
    order, and of Mᵀ, each entity's hyperedges in increasing order (scipy's CSR -> CSC conversion keeps
    them so: an entity's runs are the sub-columns :func:`_column_runs` cuts)."""
    m32 = sparse.csr_matrix((m.data.astype(np.float32), m.indices, m.indptr), shape=m.shape)
    t = m32.tocsc()  # (entity columns, hyperedges in order within each)

    def arrays(indptr, indices, data):
        return indptr.astype(np.int64), _index(indices), data

    return {"rows": arrays(m32.indptr, m32.indices, m32.data), "columns": arrays(t.indptr, t.indices, t.data)}


@dataclass(frozen=True)
class _Runs:
    """A matrix M as float32 runs: ``m32`` holds M's rows (or columns) cut into runs, every row's first run
    leading (``first``: the slice of them, row i's is run i), then the other runs (``extra``) of the rows
    that have more (``owners``, grouped by owner), added to their row in float64 by ``adder`` (``owners``
    x ``extra``, ones)."""

    m32: sparse.csr_matrix
    first: np.ndarray | slice
    extra: np.ndarray
    owners: np.ndarray
    adder: sparse.csr_matrix


def _run_sums(runs: _Runs, x: np.ndarray, *, transpose: bool = False, out: np.ndarray | None = None,
              scratch: Scratch | None = None, name: str = "sums") -> np.ndarray:
    """``M x`` (``Mᵀ x``) in float64 from M's float32 runs: each row's first run, plus the float64 sum of
    its other runs (a float64 copy of the few extra runs only, not of every run); into ``out`` if given,
    else into ``scratch``'s array ``name`` (or a new array).

    The first runs are the leading rows of the runs' product, so they are copied once, into the result."""
    scratch = scratch if scratch is not None else Scratch()
    part = _sparse_product(runs.m32.T if transpose else runs.m32, x, scratch)
    first = part[runs.first]
    y = out if out is not None else scratch.array(name, first.shape, np.float64)
    np.copyto(y, first)
    if len(runs.extra):
        y[runs.owners] += runs.adder @ part[runs.extra].astype(np.float64)
    return y


def _scaled_sums(runs: _Runs, x: np.ndarray, scale: np.ndarray, out: np.ndarray, scratch: Scratch) -> np.ndarray:
    """``scale ⊙ (M x)`` rounded to float32, into ``out``: :func:`_run_sums`' float64 sums times ``scale``
    (float64, a column), each rounded once, without a float64 array of them all (only the rows with
    several runs are summed in float64 apart)."""
    part = _sparse_product(runs.m32, x, scratch)
    first = part[runs.first]
    np.multiply(first, scale, out=out, casting="same_kind")  # (float64 products, rounded to float32)
    if len(runs.extra):
        rows = first[runs.owners].astype(np.float64)
        rows += runs.adder @ part[runs.extra].astype(np.float64)
        rows *= scale[runs.owners]
        out[runs.owners] = rows
    return out


def _sparse_product(m: sparse.csr_matrix | sparse.csc_matrix, x: np.ndarray, scratch: Scratch) -> np.ndarray:
    """``m @ x`` (float32, ``x`` C-contiguous) into ``scratch``'s array ``"part"``: scipy's own kernel
    (``csr_matvecs`` / ``csc_matvecs``, what ``m @ x`` runs) given a reused, zeroed output instead of the
    new one ``@`` allocates. Where that kernel is not found, ``m @ x`` copied in: the same sums."""
    rows, cols = m.shape
    kernel = getattr(_sparsetools, f"{m.format}_matvecs", None) if _sparsetools is not None else None
    if kernel is not None and m.dtype == np.float32 and x.dtype == np.float32 and x.flags.c_contiguous:
        part = scratch.zeros("part", (rows, x.shape[1]), np.float32)  # (the kernel adds into it)
        try:
            kernel(rows, cols, x.shape[1], m.indptr, m.indices, m.data, x.ravel(), part.ravel())
            return part
        except (TypeError, ValueError):  # a scipy whose private kernel takes other arguments
            pass
    part = scratch.array("part", (rows, x.shape[1]), np.float32)
    np.copyto(part, m @ x)
    return part


def _extra_runs(pieces: np.ndarray, first: np.ndarray | slice, extra: np.ndarray, m32: sparse.csr_matrix) -> _Runs:
    """:class:`_Runs` from each row's number of runs (``pieces``), its first run and the others in owner
    order."""
    more = pieces - 1
    owners = np.flatnonzero(more)
    adder = sparse.csr_matrix((np.ones(len(extra)), _index(np.arange(len(extra))), _index(np.r_[0, np.cumsum(more[owners])])),
                              shape=(len(owners), len(extra)))
    return _Runs(m32, first, _index(extra), _index(owners), adder)


def _row_runs(m: sparse.csr_matrix, terms: int) -> _Runs:
    """Each row of ``m`` cut into consecutive sub-rows of at most ``terms`` entries, float32: every row's
    first sub-row first (row i's is sub-row i; an empty row's is empty), then the others, grouped by row
    and in order. For ``m32 @ x``."""
    n_rows, nnz = m.shape[0], m.nnz
    indptr = m.indptr.astype(np.int64)
    counts = np.diff(indptr)
    head = np.minimum(counts, terms)
    rest = counts - head
    pieces = 1 + -(-rest // terms)
    # the entries of the first sub-rows, then the rest, each in the original order
    within = np.arange(nnz) - np.repeat(indptr[:-1], counts)
    order = np.r_[np.flatnonzero(within < terms), np.flatnonzero(within >= terms)]
    n_sub = int(pieces.sum())
    row = np.repeat(np.arange(n_rows), pieces - 1)  # the row of each extra sub-row
    rest_start = int(head.sum()) + np.r_[0, np.cumsum(rest)][:n_rows]  # where a row's rest begins
    k = np.arange(n_sub - n_rows) - np.repeat(np.r_[0, np.cumsum(pieces - 1)][:n_rows], pieces - 1)
    sub_indptr = np.r_[np.r_[0, np.cumsum(head)][:n_rows], rest_start[row] + k * terms, nnz]
    m32 = sparse.csr_matrix((m.data.astype(np.float32)[order], _index(m.indices[order]), _index(sub_indptr)),
                            shape=(n_sub, m.shape[1]))
    return _extra_runs(pieces, slice(0, n_rows), np.arange(n_rows, n_sub), m32)


def _column_runs(m: sparse.csr_matrix, terms: int) -> _Runs:
    """Each column of ``m`` cut, in row order, into sub-columns of at most ``terms`` entries: the first
    keeps the column's index, the others follow the columns (grouped by column), float32. For
    ``m32.T @ s``."""
    nnz, n_cols = m.nnz, m.shape[1]
    # each entry's rank in its column, rows in order: the column-major order of the entries' positions
    where = sparse.csr_matrix((np.arange(1, nnz + 1, dtype=np.float64), m.indices, m.indptr), shape=m.shape).tocsc()
    counts = np.diff(where.indptr)
    rank = np.empty(nnz, dtype=np.int64)
    rank[where.data.astype(np.int64) - 1] = np.arange(nnz) - np.repeat(where.indptr[:-1].astype(np.int64), counts)
    del where
    piece = rank // terms
    del rank
    pieces = np.maximum(1, -(-counts // terms))
    extra_start = n_cols + np.r_[0, np.cumsum(pieces - 1)[:-1]]
    col = m.indices
    sub_col = np.where(piece == 0, col, extra_start[col] + piece - 1)
    n_sub = n_cols + int((pieces - 1).sum())
    m32 = sparse.csr_matrix((m.data.astype(np.float32), _index(sub_col), m.indptr), shape=(m.shape[0], n_sub))
    return _extra_runs(pieces, slice(0, n_cols), np.arange(n_cols, n_sub), m32)


def _index(a: np.ndarray) -> np.ndarray:
    """int32 indices where they fit (scipy's own choice for such a matrix; half the bytes of int64)."""
    return a.astype(np.int32, copy=False) if a.size == 0 or a.max() < 2**31 - 1 else a


def normalize_rows(total: np.ndarray) -> np.ndarray:
    """Divide each float64 row by max(‖row‖, 1e-10), in place (pycleora 3.x)."""
    norms = np.sqrt(np.einsum("ij,ij->i", total, total))
    total /= np.maximum(norms, NORM_EPS)[:, None]
    return total


def sum_and_normalize(partials: pa.Table, *, dim: int) -> pa.Table:
    """Sum the partial vectors of each entity, then divide each row by max(‖row‖, 1e-10); other columns
    (the route) are taken from the entity's first partial."""
    if partials.num_rows == 0:
        return _empty(dim, partials)
    ids = partials.column("id").to_numpy()
    vecs = unpack(partials.column("vec"), dim)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    total = sum_runs(vecs, order, starts)
    normalize_rows(total)
    keep = [n for n in partials.column_names if n not in _NOT_ROUTE]
    return partials.select(keep).take(pa.array(order[starts])).append_column("vec", pack(total))


def sum_runs(vecs: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """float64 sums of the rows ``vecs[order]`` over the runs that begin at ``starts``, each run summed
    first row to last (whatever the slices or the machine: the order is part of the result's bits).

    An entity has at most one partial per group (and the residual row), so the runs are short: the k-th
    rows of all runs longer than k are added in one vectorised step, which is several times faster than
    ``np.add.reduceat`` along the rows of a wide array (measured: 587k partials x 256, 4.2 -> 1.0 s;
    reduceat adds a run's first row to the sum of the others, so the last float64 bit can differ)."""
    n, dim = len(order), vecs.shape[1]
    counts = np.diff(np.r_[starts, n])
    first = order[starts]
    later = [(runs, order[starts[runs] + k])
             for k in range(1, int(counts.max(initial=1))) for runs in [np.flatnonzero(counts > k)]]
    total = np.empty((len(starts), dim))
    for lo in range(0, dim, SLICE_COLUMNS):  # float64 copies of a slice of the partials at a time
        acc = vecs[first, lo:lo + SLICE_COLUMNS].astype(np.float64)
        for runs, rows in later:
            acc[runs] += vecs[rows, lo:lo + SLICE_COLUMNS]
        total[:, lo:lo + SLICE_COLUMNS] = acc
    return total


def route_scalings(markov: str) -> tuple[Any, Any]:
    """The ``pre`` and ``post`` route columns of an entity (``X_SCHEMA``), from its ``degree``.

    left:      (W/D) X       -> pre = 1,     post = 1/D
    symmetric: D^-½ W D^-½ X -> pre = D^-½,  post = D^-½
    """
    if markov == "left":
        pre, post = F.lit(1.0), 1.0 / F.col("degree")
    else:
        pre = post = 1.0 / F.sqrt(F.col("degree"))
    return pre.alias("pre"), post.alias("post")


def propagate(x: DataFrame, plans: DataFrame, *, dim: int, num_blocks: int, residual: float = 0.0,
              groups: BlockGroups | None = None) -> DataFrame:
    """``x`` (``X_SCHEMA``) -> the next iteration's ``x``, lazily.

    ``plans``: (block, plan) from :func:`spark_cleora.engine.graph.plans_of`, ``num_blocks`` of them (their ids
    from :func:`spark_cleora.engine.graph.block_keys`). ``residual`` is pycleora's residual mixing
    ``rownorm((1-α)·MX + α·X)`` = ``rownorm(MX + α/(1-α)·X)``: the rows ``α/(1-α)·x`` join the partial
    sums before the row normalisation.

    Both shuffles have one partition per block or group (not ``spark.sql.shuffle.partitions``): the
    multiply step's task holds one block, or with ``groups`` one group of blocks (the ids hash to distinct
    partitions), and the sum step's task one slice of the entities, sorted in numpy. Two shuffle
    partitions (a local[2] default) would instead make Spark sort half an iteration per task and spill
    once that outgrows memory.
    """
    partitions = num_blocks
    if groups is None or groups.count == num_blocks:  # every block on its own: the block ids route
        routed = x.select(F.explode("blocks").alias("block"), *[c for c in x.columns])
        plans = plans.select("block", F.col("block").alias("part"), "plan")
    else:  # each entity's vector once per group that has one of its blocks
        group_of = F.create_map(*[F.lit(v) for kv in sorted(groups.group_of.items()) for v in kv])
        routed = x.select(F.explode(F.array_distinct(F.transform("blocks", lambda b: group_of[b]))).alias("block"),
                          *[c for c in x.columns])
        plans = plans.select(group_of[F.col("block")].alias("block"), F.col("block").alias("part"), "plan")
        partitions = groups.count

    def step(batches):
        _maybe_inject_failure("multiply")
        vectors, plan = split_block_rows(batches)
        if vectors is not None:  # (a partition without rows has nothing to multiply)
            yield from multiply_block(vectors, plan, dim=dim).to_batches()

    def reduce(batches):
        _maybe_inject_failure("reduce")
        batches = [b for b in batches if b.num_rows]
        if batches:  # all partials of this partition's entities (partitioned by id)
            yield from sum_and_normalize(pa.Table.from_batches(batches), dim=dim).to_batches()

    # Each block or group id hashes to a partition of its own (block_keys), so a partition is one block or
    # group: its routed vectors and plan rows meet in one mapInArrow call with no sort. (A cogroup would
    # sort each partition's ~1 KB rows by the key they all share: at 10M events in 2 blocks, 12.4 -> 8.6 s.)
    both = routed.unionByName(plans, allowMissingColumns=True).repartition(partitions, "block")
    partials = both.mapInArrow(step, X_SCHEMA)
    if residual:
        factor = residual / (1.0 - residual)

        def scale(batches):
            for b in batches:
                vec = unpack(b.column("vec"), dim).astype(np.float64) * factor
                yield b.set_column(b.schema.get_field_index("vec"), "vec", pack(vec))

        partials = partials.unionByName(x.mapInArrow(scale, X_SCHEMA))
    return partials.repartition(num_blocks, "id").mapInArrow(reduce, X_SCHEMA)


def unpacked(x: DataFrame, *, dim: int) -> DataFrame:
    """(id, packed vec) -> (id, vec array<float>) for output."""

    def convert(batches):
        for b in batches:
            vec = unpack(b.column("vec"), dim)
            yield pa.RecordBatch.from_arrays([b.column("id"), to_list_array(vec)], names=["id", "vec"])

    return x.mapInArrow(convert, "id long, vec array<float>")
