"""The per-block multiplication equals the dense Markov matrix product (no Spark needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from spark_cleora.engine.propagate import (SLICE_COLUMNS, block_bytes_per_row_dim, block_product, build_plan, load_plan,
                                    multiply_block, sum_and_normalize)
from spark_cleora.engine.vectors import pack, unpack


def dense_markov(hyperedges, n, reflexive, markov):
    """W and D exactly as pycleora's handle_hyperedge defines them (spec §2.2)."""
    w = np.zeros((n, n))
    d = np.zeros(n)
    for a, b in hyperedges:
        if reflexive:
            b = a
        val = 1.0 / (len(a) * len(b))
        for x in a:
            d[x] += 1.0 / len(b)
        for y in b:
            d[y] += 1.0 / len(a)
        for x in a:
            for y in b:
                w[x, y] += val
                w[y, x] += val
    with np.errstate(divide="ignore", invalid="ignore"):  # entities in no hyperedge have d = 0
        m = w / d[:, None] if markov == "left" else w / np.sqrt(np.outer(d, d))
    return np.where(w > 0, m, 0.0), d


@pytest.mark.parametrize("reflexive", [True, False])
@pytest.mark.parametrize("markov", ["left", "symmetric"])
@pytest.mark.parametrize("dim", [5, SLICE_COLUMNS * 2 + 22])  # one slice; three, the last one partial
def test_block_product_equals_dense(reflexive, markov, dim):
    rng = np.random.default_rng(1)
    n = 30
    hyper = []
    for _ in range(25):
        a = list(rng.integers(0, n, size=rng.integers(1, 8)))  # repeats allowed (multiplicity)
        b = list(rng.integers(0, n, size=rng.integers(1, 8)))
        hyper.append((a, b))
    m, d = dense_markov(hyper, n, reflexive, markov)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    rows = []
    for h, (a, b) in enumerate(hyper):
        for side, members in ((0, a), (1, [] if reflexive else b)):
            for e in set(members):
                rows.append((h, side, e, float(members.count(e))))
    members = pa.table({
        "h": pa.array([r[0] for r in rows], pa.int64()), "side": pa.array([r[1] for r in rows], pa.int32()),
        "id": pa.array([r[2] for r in rows], pa.int64()), "weight": pa.array([r[3] for r in rows]),
    })
    present = sorted({r[2] for r in rows})
    ids = np.array(present[::-1], dtype=np.int64)  # unsorted on purpose
    pre = np.ones(len(ids)) if markov == "left" else 1 / np.sqrt(d[ids])
    post = 1 / d[ids] if markov == "left" else 1 / np.sqrt(d[ids])
    routed = pa.table({"id": pa.array(ids), "pre": pa.array(pre), "post": pa.array(post),
                       "vec": pack(x[ids])})
    out = multiply_block(routed, plan_table(members, reflexive), dim=dim)
    got = dict(zip(out.column("id").to_pylist(), unpack(out.column("vec"), dim)))
    want = m @ x.astype(np.float64)
    for e in present:
        np.testing.assert_allclose(got[e], want[e], rtol=1e-5, atol=1e-6)


def test_empty_block():
    empty = pa.table({"id": pa.array([], pa.int64()), "pre": pa.array([], pa.float64()),
                      "post": pa.array([], pa.float64()), "vec": pack(np.zeros((0, 3)))})
    members = pa.table({"h": pa.array([1], pa.int64()), "side": pa.array([0], pa.int32()),
                        "id": pa.array([7], pa.int64()), "weight": pa.array([1.0])})
    assert multiply_block(empty, plan_table(members, True), dim=3).num_rows == 0


def test_plan_and_routed_vectors_must_agree():
    members = pa.table({"h": pa.array([1, 1], pa.int64()), "side": pa.array([0, 0], pa.int32()),
                        "id": pa.array([7, 8], pa.int64()), "weight": pa.array([1.0, 1.0])})
    routed = pa.table({"id": pa.array([7], pa.int64()), "pre": pa.array([1.0]), "post": pa.array([1.0]),
                       "vec": pack(np.ones((1, 3)))})
    with pytest.raises(RuntimeError, match="disagree"):
        multiply_block(routed, plan_table(members, True), dim=3)


def plan_table(members, reflexive):
    return pa.table({"block": pa.array([0], pa.int32()),
                     "plan": pa.array([build_plan(members, reflexive=reflexive)], pa.binary())})


def test_sum_runs_adds_each_run_first_row_to_last():
    """Each entity's partials are summed in float64 in their sorted order, first to last, to the bit
    (magnitudes spread over 2**±30, so another order would change the last bits), over runs of 1 to 40
    partials and a width that is not a multiple of the slices."""
    from spark_cleora.engine.propagate import sum_runs

    rng = np.random.default_rng(11)
    ids = np.repeat(np.arange(300), rng.integers(1, 41, 300))
    rng.shuffle(ids)
    n = len(ids)
    vecs = (rng.standard_normal((n, 70)) * np.exp2(rng.integers(-30, 30, (n, 70)))).astype(np.float32)
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, ids[order][1:] != ids[order][:-1]])
    want = np.empty((len(starts), 70))
    for i, (lo, hi) in enumerate(zip(starts, np.r_[starts[1:], n])):
        acc = vecs[order[lo]].astype(np.float64)
        for row in order[lo + 1:hi]:
            acc = acc + vecs[row]
        want[i] = acc
    got = sum_runs(vecs, order, starts)
    np.testing.assert_array_equal(got, want)
    reduceat = np.add.reduceat(vecs[order].astype(np.float64), starts, axis=0)
    assert not np.array_equal(got, reduceat)  # (the data is one where the order shows)


def test_sum_and_normalize_groups_partials_by_entity():
    rng = np.random.default_rng(3)
    ids = np.array([5, 2, 5, 9, 2, 5], dtype=np.int64)
    vecs = rng.standard_normal((6, 4)).astype(np.float32)
    vecs[3] = 0.0  # an all-zero row stays zero (pycleora divides by max(norm, 1e-10))
    out = sum_and_normalize(pa.table({"id": pa.array(ids), "vec": pack(vecs)}), dim=4)
    got = dict(zip(out.column("id").to_pylist(), unpack(out.column("vec"), 4)))
    assert sorted(got) == [2, 5, 9]
    for e in (2, 5):
        s = vecs[ids == e].astype(np.float64).sum(axis=0)
        np.testing.assert_allclose(got[e], s / np.linalg.norm(s), rtol=1e-6)
    np.testing.assert_array_equal(got[9], np.zeros(4))


def test_block_builder_counts_input_rows_per_rule_and_builds_from_accepted_rows_only():
    """Deferred validation: rejected rows are counted by rule (with their dedupe multiplicity) and dropped."""
    from spark_cleora.engine.graph import ENTITY_PART, INPUT_ROWS, PLAN, blocks_of_partition

    rows = pa.table({
        "h": pa.array([1, 1, 2, 2, 9, 9, 9], pa.int64()),
        "side": pa.array([0] * 7, pa.int32()), "col": pa.array([0] * 7, pa.int32()),
        "entity": pa.array(["a", "b", "a", "c", None, None, None]),
        "weight": pa.array([1.0, 1.0, 1.0, 2.0, 0.0, 0.0, 0.0]),
        "_reject": pa.array([None, None, None, None, "null_entity", "null_entity", "bad_weight"]),
        "_rows": pa.array([1, 1, 1, 3, 1, 2, 1], pa.int64()),  # 3 = three duplicate events merged by dedupe
        "id": pa.array([10, 11, 10, 12, 0, 0, 0], pa.int64()), "_id2": pa.array([0] * 7, pa.int32()),
        "block": pa.array([5] * 7, pa.int32()),
    })
    out = pa.Table.from_batches(list(blocks_of_partition(rows.to_batches(max_chunksize=3), reflexive=True)))
    kind = out.column("kind").to_pylist()
    counts = {r["entity"]: r["rows"] for r in out.filter(pa.array([k == INPUT_ROWS for k in kind])).to_pylist()}
    assert counts == {None: 6, "null_entity": 3, "bad_weight": 1}
    shares = {r["entity"]: (r["occurrences"], r["degree"]) for r in
              out.filter(pa.array([k == ENTITY_PART for k in kind])).to_pylist()}
    # reflexive degree share 2·w/|A|: h1 = {a, b} (|A| = 2), h2 = {a, c×2} (|A| = 3)
    want = {"a": (2.0, 1.0 + 2 / 3), "b": (1.0, 1.0), "c": (2.0, 4 / 3)}
    assert sorted(shares) == sorted(want)
    assert all(shares[e] == pytest.approx(want[e]) for e in want)
    plan = out.filter(pa.array([k == PLAN for k in kind])).to_pylist()
    assert [(p["block"], p["memberships"], p["hyperedges"], p["largest"]) for p in plan] == [(5, 4, 2, 2)]


def test_slices_of_the_dimensions_give_the_whole_rows_bits():
    """The shuffle engine's tasks work on SLICE_COLUMNS dimensions at a time; each column's sums are the
    same as over whole rows, to the bit (the engines' results must not depend on it)."""
    rng = np.random.default_rng(5)
    dim, n = SLICE_COLUMNS * 3 + 7, 200
    h = rng.integers(0, 40, 900)
    members = pa.table({"h": pa.array(h, pa.int64()), "side": pa.array(rng.integers(0, 2, 900), pa.int32()),
                        "id": pa.array(rng.integers(0, n, 900), pa.int64()), "weight": pa.array(rng.random(900) + 0.5)})
    plan = plan_table(members, False)
    ids = load_plan(plan.column("plan")[0].as_py())["ids"]
    x = rng.standard_normal((len(ids), dim)).astype(np.float32)
    pre, post = rng.random(len(ids)) + 0.1, rng.random(len(ids)) + 0.1
    routed = pa.table({"id": pa.array(ids[::-1]), "pre": pa.array(pre[::-1]), "post": pa.array(post[::-1]),
                       "vec": pack(x[::-1])})
    out = multiply_block(routed, plan, dim=dim)
    whole = block_product(load_plan(plan.column("plan")[0].as_py()), x, pre, post).astype(np.float32)
    np.testing.assert_array_equal(out.column("id").to_numpy(), ids)
    np.testing.assert_array_equal(unpack(out.column("vec"), dim), whole)

    part_ids = rng.integers(0, 50, 700)
    parts = rng.standard_normal((700, dim)).astype(np.float32)
    summed = sum_and_normalize(pa.table({"id": pa.array(part_ids), "vec": pack(parts)}), dim=dim)
    order = np.argsort(part_ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(part_ids[order]) != 0])
    total = np.add.reduceat(parts[order].astype(np.float64), starts, axis=0)
    total /= np.maximum(np.sqrt(np.einsum("ij,ij->i", total, total)), 1e-10)[:, None]
    np.testing.assert_array_equal(unpack(summed.column("vec"), dim), total.astype(np.float32))


def test_block_memory_bound_per_row_and_dimension():
    """Whole rows up to one slice; beyond it the float64 temporaries are per slice, so the bound falls."""
    assert block_bytes_per_row_dim(8) == block_bytes_per_row_dim(SLICE_COLUMNS) == 56
    assert block_bytes_per_row_dim(4 * SLICE_COLUMNS) == 25
    assert block_bytes_per_row_dim(1024) < block_bytes_per_row_dim(256) < block_bytes_per_row_dim(128)


_PEAK_SCRIPT = r"""
import json, numpy as np, pyarrow as pa
from spark_cleora.engine.propagate import build_plan, load_plan, multiply_block, sum_and_normalize
from spark_cleora.engine.vectors import pack

def rss(field):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(field))

m, dim, chunk = 100_000, 256, 10_000  # worst case: every membership its own entity and hyperedge
members = pa.table({"h": pa.array(np.arange(m), pa.int64()), "side": pa.array(np.zeros(m, np.int32)),
                    "id": pa.array(np.arange(m), pa.int64()), "weight": pa.array(np.ones(m))})
plan = pa.table({"block": pa.array([0], pa.int32()), "plan": pa.array([build_plan(members, reflexive=True)])})
x = np.random.default_rng(0).standard_normal((m, dim)).astype(np.float32)
batches = [pa.record_batch({"id": pa.array(np.arange(lo, lo + chunk)), "pre": pa.array(np.ones(chunk)),
                            "post": pa.array(np.ones(chunk)), "vec": pack(x[lo:lo + chunk])})
           for lo in range(0, m, chunk)]  # Spark hands the task its rows in batches
routed = pa.Table.from_batches(batches)
del x
out = {}
for name, run in (("multiply", lambda: multiply_block(routed, plan, dim=dim)),
                  ("sum", lambda: sum_and_normalize(routed.select(["id", "vec"]), dim=dim))):
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark
    base = rss("VmRSS:")
    result = run()
    out[name] = (rss("VmHWM:") - base) / (m * dim)
    del result
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to measure the peak")
def test_block_memory_bound_holds_for_the_worst_block():
    """Measured: a block whose every membership is its own entity and hyperedge (the bound's worst case),
    its rows in Spark-sized batches, stays within block_bytes_per_row_dim at dim 256, in both steps."""
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True)
    per_row_dim = json.loads(out.stdout.strip().splitlines()[-1])
    bound = block_bytes_per_row_dim(256)
    for step, used in per_row_dim.items():
        assert 0 < used <= bound, f"{step}: {used:.1f} bytes per row x dim above the bound {bound}"


@pytest.mark.parametrize("collide", [False, True])
def test_one_column_block_builds_the_general_paths_rows_to_the_byte(collide):
    """The block builder's one-column fast path (rank the keys once, one stable sort) gives the general
    five-key path's rows: the same shares in the same order, the same sums, the same plan bytes; a block
    where two names share a 64-bit key falls back to the general path."""
    from spark_cleora.engine.graph import _general_block, _one_column_block

    rng = np.random.default_rng(11)
    n = 5000
    h = rng.integers(-(2**62), 2**62, 300)[rng.integers(0, 300, n)]
    names = np.array([f"e{i}" for i in range(400)])
    pick = rng.zipf(1.3, n) % 400
    ids = np.array([hash(s) % (2**61) for s in names])[pick] - 2**60
    id2 = (pick * 7919 % 65521).astype(np.int32)
    if collide:  # e0 and e1 under one 64-bit key (different second hashes)
        ids[pick == 1] = ids[pick == 0][0] if (pick == 0).any() else ids[pick == 1]
    t = pa.table({"h": pa.array(h, pa.int64()), "side": pa.array(np.zeros(n, np.int32)),
                  "col": pa.array(np.zeros(n, np.int32)), "entity": pa.array(names[pick]),
                  "weight": pa.array(rng.random(n) + 0.5), "id": pa.array(ids), "_id2": pa.array(id2)})
    cols = [t.column(c).to_numpy() for c in ("h", "side", "col", "id", "_id2")]
    fast = _one_column_block(t, 3, *cols, reflexive=True)
    general = pa.Table.from_batches(list(_general_block(t, 3, *cols, reflexive=True)))
    if collide and (pick == 0).any() and (pick == 1).any():
        assert fast is None
        return
    assert pa.Table.from_batches(fast).equals(general)
    # not the common block: the general path
    assert _one_column_block(t, 3, cols[0], cols[1] + 1, *cols[2:], reflexive=True) is None
    assert _one_column_block(t, 3, *cols, reflexive=False) is None


def test_a_group_of_blocks_multiplies_as_the_blocks_summed():
    """A multiply task holding several blocks (a group) gives each entity the sum of its blocks' partials,
    over the union of their entities; the plan rows may arrive in any order (``part`` orders them)."""
    rng = np.random.default_rng(8)
    dim, n = 5, 30
    blocks = []
    for b in range(3):
        k = 120
        blocks.append(pa.table({"h": pa.array(rng.integers(0, 25, k) + 100 * b, pa.int64()),
                                "side": pa.array(rng.integers(0, 2, k), pa.int32()),
                                "id": pa.array(rng.integers(0, n, k), pa.int64()),
                                "weight": pa.array(rng.random(k) + 0.5)}))
    x = rng.standard_normal((n, dim)).astype(np.float32)
    pre, post = rng.random(n) + 0.1, rng.random(n) + 0.1

    def routed(ids):
        ids = np.asarray(ids)[::-1]
        return pa.table({"id": pa.array(ids), "pre": pa.array(pre[ids]), "post": pa.array(post[ids]),
                         "vec": pack(x[ids])})

    want = np.zeros((n, dim))
    for members in blocks:
        ids = np.unique(members.column("id").to_numpy())
        out = multiply_block(routed(ids), plan_table(members, False), dim=dim)
        want[out.column("id").to_numpy()] += unpack(out.column("vec"), dim)
    union = np.unique(np.concatenate([m.column("id").to_numpy() for m in blocks]))
    plans = pa.table({"part": pa.array([2, 0, 1], pa.int32()),
                      "plan": pa.array([build_plan(blocks[i], reflexive=False) for i in (2, 0, 1)], pa.binary())})
    out = multiply_block(routed(union), plans, dim=dim)
    np.testing.assert_array_equal(out.column("id").to_numpy(), union)
    np.testing.assert_allclose(unpack(out.column("vec"), dim), want[union], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="disagree"):  # an entity without a route
        multiply_block(routed(union[1:]), plans, dim=dim)


def test_blocks_are_grouped_into_the_fewest_tasks_that_fit():
    from spark_cleora.engine.propagate import group_blocks, group_bytes

    sizes = np.array([[1000, 100, 200]] * 6)  # memberships, hyperedges, entities per block
    one = group_bytes(entities=200, hyperedges=100, memberships=1000, dim=64)
    assert one == 200 * 64 * 12 + 64 * (200 * 28 + 100 * 20) + 1000 * 108
    gib = 2**30

    def groups(budget, parallelism=1, entities=None):
        return group_blocks(sizes, entities=entities, dim=64, memory_gb=budget / gib, parallelism=parallelism).tolist()

    assert groups(6 * one) == [0] * 6  # everything fits one task
    assert groups(6 * one, parallelism=2) == [0, 0, 0, 1, 1, 1]  # but one per task slot
    assert groups(3 * one) == [0, 0, 0, 1, 1, 1]
    assert groups(2 * one) == [0, 0, 1, 1, 2, 2]
    assert groups(one - 1) == [0, 1, 2, 3, 4, 5]  # nothing fits: every block on its own, as sized
    # a group's entities are at most all the graph's: 6 blocks of 200 shares over 250 entities
    assert groups(group_bytes(entities=250, hyperedges=600, memberships=6000, dim=64), entities=250) == [0] * 6
    assert group_blocks(np.zeros((0, 3)), entities=None, dim=8, memory_gb=1, parallelism=2).tolist() == []
    # whatever the budget, a group's plans (12 bytes per membership) stay under 1 GiB
    big = np.array([[50_000_000, 1, 1]] * 4)
    assert group_blocks(big, entities=None, dim=8, memory_gb=1000, parallelism=1).tolist() == [0, 1, 2, 3]
    assert group_blocks(big // 2, entities=None, dim=8, memory_gb=1000, parallelism=1).tolist() == [0, 0, 1, 1]


def _runs_matrix():
    """Rows (hyperedges) of 0, 1, 64, 65 and ~2,300 members (3,040 draws, repeats dropped) over 5000
    entities, the first 40 in every non-empty row (30 copies of each size): long rows and long columns,
    cut into several runs of F32_TERMS."""
    from scipy import sparse

    rng = np.random.default_rng(11)
    rows = []
    for size in [0, 1, 64, 65, 3000] * 30:
        rows.append(np.unique(np.r_[np.arange(min(size, 40)), rng.integers(0, 5000, size)])[:size])
    indptr = np.r_[0, np.cumsum([len(r) for r in rows])]
    indices = np.concatenate(rows).astype(np.int32)
    data = rng.integers(1, 4, len(indices)).astype(np.float64)  # multiplicities
    return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), 5000))


def test_products_sum_runs_of_at_most_f32_terms_in_float32_and_the_runs_in_float64():
    from spark_cleora.engine.propagate import F32_TERMS, _column_runs, _row_runs, _run_sums

    m = _runs_matrix()
    rows, cols = _row_runs(m, F32_TERMS), _column_runs(m, F32_TERMS)
    assert np.diff(rows.m32.indptr).max() == F32_TERMS and np.bincount(cols.m32.indices).max() == F32_TERMS
    assert rows.m32.shape[0] == sum(max(1, -(-k // F32_TERMS)) for k in np.diff(m.indptr))
    assert cols.m32.shape[1] == sum(max(1, -(-k // F32_TERMS)) for k in np.bincount(m.indices, minlength=5000))
    x = np.random.default_rng(2).uniform(-1, 1, (5000, 3)).astype(np.float32)
    s = np.random.default_rng(3).uniform(-1, 1, (m.shape[0], 3)).astype(np.float32)
    for got, exact, terms in ((_run_sums(rows, x), m @ x.astype(np.float64), abs(m) @ abs(x.astype(np.float64))),
                              (_run_sums(cols, s, transpose=True), m.T @ s.astype(np.float64),
                               abs(m.T) @ abs(s.astype(np.float64)))):
        assert got.dtype == np.float64
        # each sum within (F32_TERMS + 1) float32 roundings of the sum of its terms' magnitudes
        assert np.all(np.abs(got - exact) <= (F32_TERMS + 1) * 2.0**-24 * terms)


def test_runs_keep_a_huge_sum_exact_where_one_float32_sum_drifts():
    """200k members of value 0.1 (a hyperedge's sum) and an entity in 200k hyperedges (its sum over them):
    one float32 sum over the whole row is off by more than the runs' bound; the runs are within it."""
    from scipy import sparse

    from spark_cleora.engine.propagate import F32_TERMS, _column_runs, _row_runs, _run_sums

    n = 200_000
    row = sparse.csr_matrix((np.ones(n), np.arange(n), [0, n]), shape=(1, n))
    x = np.full((n, 1), 0.1, dtype=np.float32)
    exact = float(np.float64(np.float32(0.1)) * n)
    bound = (F32_TERMS + 1) * 2.0**-24 * exact
    whole = np.float32(0)
    for v in np.cumsum(x[:, 0], dtype=np.float32)[-1:]:  # numpy's float32 running sum: one float32 accumulator
        whole = v
    assert abs(float(whole) - exact) > bound
    assert abs(_run_sums(_row_runs(row, F32_TERMS), x)[0, 0] - exact) <= bound
    column = sparse.csr_matrix(row.T)  # one entity (column) in n hyperedges (rows)
    assert abs(_run_sums(_column_runs(column, F32_TERMS), x, transpose=True)[0, 0] - exact) <= bound


def _runs_plan(reflexive: bool, compiled: bool | None = None) -> dict:
    """A prepared plan over :func:`_runs_matrix` (5000 entities; long rows and columns), two-sided unless
    ``reflexive``; ``compiled`` as in ``prepare_plan``."""
    from spark_cleora.engine.propagate import prepare_plan

    m = _runs_matrix()
    plan = {"a": m, "scale": 1.0 / np.maximum(np.asarray(m.sum(axis=1)).ravel(), 1) ** 2, "ids": np.arange(5000)}
    if not reflexive:
        plan["b"] = _runs_matrix()[::-1].tocsr()
    prepare_plan(plan, compiled=compiled)
    return plan


@pytest.mark.parametrize("reflexive", [True, False])
def test_block_product_gives_each_column_the_same_bits_in_any_slice(reflexive):
    """Runs beyond the first (long rows and columns) included: slices of 1, 7 and 64 columns and the whole
    rows give the same bits, so the one-task engine's threads and the shuffle engine's slices agree."""
    plan = _runs_plan(reflexive)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5000, 70)).astype(np.float32)
    post = rng.random(5000) + 0.5
    for pre in (rng.random(5000) + 0.5, np.ones(5000)):  # symmetric-like scalings; left Markov (x as it is)
        whole = block_product(plan, x, pre, post)
        for width in (1, 7, 64):
            sliced = np.hstack([block_product(plan, x[:, lo:lo + width], pre, post) for lo in range(0, 70, width)])
            assert sliced.tobytes() == whole.tobytes(), width
            into = np.full((5000, 70), np.nan)  # the one task's way: into views of its float64 buffer
            for lo in range(0, 70, width):
                got = block_product(plan, x[:, lo:lo + width], pre, post, out=into[:, lo:lo + width])
                assert np.shares_memory(got, into)
            assert into.tobytes() == whole.tobytes(), width


def test_prepare_plan_drops_the_float64_matrices_only_when_asked():
    """``drop``: the matrices and the arrays load_plan built them on leave the plan; the runs stay, and
    the products are the same."""
    from spark_cleora.engine.propagate import prepare_plan

    members = pa.table({"h": pa.array([0, 0, 1, 1, 1], pa.int64()), "side": pa.array([0] * 5, pa.int32()),
                        "id": pa.array([1, 2, 1, 2, 3], pa.int64()), "weight": pa.array([1.0] * 5)})
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    kept, dropped = (load_plan(build_plan(members, reflexive=True)) for _ in range(2))
    prepare_plan(kept)
    prepare_plan(dropped, drop=True)
    assert {"a", "a_data", "a_indices", "a_indptr"} <= kept.keys()
    assert not {"a", "a_data", "a_indices", "a_indptr"} & dropped.keys() and {"runs", "ids", "scale"} <= dropped.keys()
    ones = np.ones(3)
    assert block_product(kept, x, ones, ones).tobytes() == block_product(dropped, x, ones, ones).tobytes()


@pytest.mark.parametrize("reflexive", [True, False])
def test_a_reused_scratch_and_scipys_own_product_give_the_same_bits(reflexive, monkeypatch):
    """The products with one thread's Scratch reused slice after slice (slices of different widths, so its
    arrays are cut to new shapes) equal fresh temporaries, and equal scipy's public ``m @ x`` in place of
    its kernel (the fallback where ``_sparsetools`` is not found); the Scratch's arrays are made once."""
    from spark_cleora.engine import propagate
    from spark_cleora.engine.propagate import Scratch

    plan = _runs_plan(reflexive)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5000, 70)).astype(np.float32)
    pre, post = rng.random(5000) + 0.5, rng.random(5000) + 0.5
    slices = [(0, 64), (64, 70), (10, 17), (0, 64)]
    fresh = [block_product(plan, x[:, lo:hi], pre, post) for lo, hi in slices]
    scratch = Scratch()
    block_product(plan, x[:, 0:64], pre, post, scratch=scratch)
    arrays = dict(scratch._arrays)
    for (lo, hi), want in zip(slices, fresh):
        got = block_product(plan, x[:, lo:hi], pre, post, scratch=scratch)
        assert got.tobytes() == want.tobytes(), (lo, hi)
    assert all(scratch._arrays[name] is a for name, a in arrays.items())  # reused, never made again
    monkeypatch.setattr(propagate, "_sparsetools", None)
    for (lo, hi), want in zip(slices, fresh):
        assert block_product(plan, x[:, lo:hi], pre, post).tobytes() == want.tobytes(), (lo, hi)


def test_block_counts_fill_the_last_wave_of_tasks():
    """The graph build's block count is rounded up to a multiple of the tasks that run at once when that
    adds at most a quarter more blocks (11 -> 12 on 2 cores), and left alone otherwise."""
    from spark_cleora.engine.graph import blocks_for

    assert blocks_for(10_000_000, dim=256, block_memberships=909_091, memory_gb=4, parallelism=2) == 12  # 11
    assert blocks_for(10_000_000, dim=256, block_memberships=1_000_000, memory_gb=4, parallelism=2) == 10
    assert blocks_for(10_000_000, dim=256, block_memberships=1_000_000, memory_gb=4, parallelism=4) == 12  # 10
    assert blocks_for(10_000_000, dim=256, block_memberships=1_000_000, memory_gb=4, parallelism=8) == 10  # not 16
    assert blocks_for(10_000_000, dim=256, block_memberships=800_000, memory_gb=4, parallelism=10) == 13  # not 20
    assert blocks_for(30_000, dim=256, block_memberships=1_000_000, memory_gb=4, parallelism=2) == 2  # 30k/20k
    assert blocks_for(10_000, dim=256, block_memberships=1_000_000, memory_gb=4, parallelism=2) == 1


def test_a_kernel_that_refuses_its_arguments_falls_back_to_scipys_product(monkeypatch):
    """scipy's private kernel is only an allocation saved: one that raises on its arguments (another scipy
    release) gives way to the public ``m @ x``, with the same bits."""
    from spark_cleora.engine import propagate

    plan = _runs_plan(True)
    x = np.random.default_rng(6).standard_normal((5000, 9)).astype(np.float32)
    ones = np.ones(5000)
    want = block_product(plan, x, ones, ones)

    class Refusing:
        @staticmethod
        def csr_matvecs(*args):
            raise TypeError("other arguments")

        csc_matvecs = csr_matvecs

    monkeypatch.setattr(propagate, "_sparsetools", Refusing)
    assert block_product(plan, x, ones, ones).tobytes() == want.tobytes()


@pytest.mark.parametrize("reflexive", [True, False])
def test_numbas_loops_give_scipys_bits(reflexive):
    """The products by numba's compiled loops equal scipy's runs bit for bit (runs beyond the first
    included): whole rows and slices, in one thread and in ranges of rows on three, into views of a wider
    float64 buffer, with and without the ``pre`` scaling."""
    pytest.importorskip("numba")
    from concurrent.futures import ThreadPoolExecutor

    from spark_cleora.engine.propagate import compiled_products

    assert compiled_products() is not None
    scipy_plan, loops_plan = _runs_plan(reflexive), _runs_plan(reflexive, compiled=True)
    assert "runs" in scipy_plan and "kernels" in loops_plan and "runs" not in loops_plan
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5000, 70)).astype(np.float32)
    post = rng.random(5000) + 0.5
    with ThreadPoolExecutor(3) as pool:
        for pre in (rng.random(5000) + 0.5, np.ones(5000)):
            want = block_product(scipy_plan, x, pre, post)
            for threads in ({}, {"pool": pool, "threads": 3}):
                assert block_product(loops_plan, x, pre, post, **threads).tobytes() == want.tobytes()
                into = np.full((5000, 90), np.nan)
                for lo, hi in ((0, 7), (7, 64), (64, 70)):
                    got = block_product(loops_plan, x[:, lo:hi], pre, post, out=into[:, lo + 10:hi + 10], **threads)
                    assert np.shares_memory(got, into)
                assert into[:, 10:80].tobytes() == want.tobytes()
                assert np.isnan(into[:, :10]).all() and np.isnan(into[:, 80:]).all()


def test_without_numba_a_plan_takes_scipys_path(monkeypatch):
    """No compiled loops (numba missing or unusable here): a plan asked for them gets scipy's runs and the
    same products."""
    from spark_cleora.engine import propagate

    want = block_product(_runs_plan(True), np.ones((5000, 3), dtype=np.float32), np.ones(5000), np.ones(5000))
    monkeypatch.setattr(propagate, "compiled_products", lambda: None)
    plan = _runs_plan(True, compiled=True)
    assert "runs" in plan and "kernels" not in plan
    got = block_product(plan, np.ones((5000, 3), dtype=np.float32), np.ones(5000), np.ones(5000))
    assert got.tobytes() == want.tobytes()


def test_large_plans_take_the_compiled_loops_by_default(monkeypatch):
    pytest.importorskip("numba")
    from spark_cleora.engine import propagate

    assert _runs_matrix().nnz < propagate.COMPILED_MIN_MEMBERSHIPS
    assert "runs" in _runs_plan(True)
    monkeypatch.setattr(propagate, "COMPILED_MIN_MEMBERSHIPS", _runs_matrix().nnz)
    assert "kernels" in _runs_plan(True)


@pytest.mark.parametrize("reflexive", [True, False])
def test_product_by_rows_hands_over_the_rows_of_block_product(reflexive, monkeypatch):
    """Range by range (ranges smaller than a thread's span, so a thread sums several), one thread and three:
    every entity's float64 row is handed over once, with block_product's bits; a plan on scipy's path is
    refused."""
    pytest.importorskip("numba")
    from concurrent.futures import ThreadPoolExecutor

    from spark_cleora.engine import propagate
    from spark_cleora.engine.propagate import product_by_rows

    monkeypatch.setattr(propagate, "ROWS_AT_ONCE", 97)
    plan = _runs_plan(reflexive, compiled=True)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5000, 70)).astype(np.float32)
    pre, post = rng.random(5000) + 0.5, rng.random(5000) + 0.5
    want = block_product(plan, x, pre, post)
    with ThreadPoolExecutor(3) as pool:
        for threads in ({}, {"pool": pool, "threads": 3}):
            got = np.full((5000, 70), np.nan)
            seen = []

            def consume(lo, hi, rows):
                assert hi - lo <= 97 and rows.shape == (hi - lo, 70)
                got[lo:hi] = rows
                seen.append((lo, hi))

            product_by_rows(plan, x, pre, post, consume, **threads)
            assert got.tobytes() == want.tobytes()
            assert sorted(seen)[0][0] == 0 and all(a[1] == b[0] for a, b in zip(sorted(seen), sorted(seen)[1:]))
    with pytest.raises(ValueError, match="not prepared"):
        product_by_rows(_runs_plan(reflexive), x, pre, post, consume)


def test_stable_order_is_numpys_stable_argsort():
    """Ties (many equal keys) keep their positions; keys near the bound; the fallback where a key and its
    position do not fit one int64 together; no keys."""
    from spark_cleora.engine.graph import stable_order

    rng = np.random.default_rng(9)
    for n, bound in ((1, 1), (2, 1), (1000, 3), (100_000, 50_000), (5000, 2**40), (5000, 2**62)):
        key = rng.integers(0, bound, n)
        key[: n // 10] = bound - 1
        got = stable_order(key, bound)
        assert got.dtype.kind == "i" and np.array_equal(got, np.argsort(key, kind="stable")), (n, bound)
    assert len(stable_order(np.zeros(0, dtype=np.int64), 10)) == 0
