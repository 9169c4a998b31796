"""The one-task and shuffle engines: same numbers for every option, ``auto`` picks by memory, resume works
across engines."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import spark_lines
from oracle import random_hyperedges

from spark_cleora.config import EmbedConfig
from spark_cleora.engine.embed import run_embedding
from spark_cleora.engine.one_task import one_task_bytes, slice_width
from spark_cleora.engine.work_store import WorkStore

ROWS = [" ".join(h) for h in random_hyperedges(400, 150, seed=71)]
BIPARTITE = [f"U{i % 60}\t{' '.join(h)}" for i, h in enumerate(random_hyperedges(300, 120, seed=72))]


def _run(spark, rows, columns, **opts):
    cfg = EmbedConfig(input_format="cleora-tsv", columns=columns, checkpoint="local", **opts)
    res = run_embedding(spark, cfg, spark_lines(spark, rows), store=None)
    return {r["entity"]: np.asarray(r["embedding"], dtype=np.float64) for r in res.embeddings.collect()}, res.report


def _assert_same(a, b, atol=1e-6):
    assert set(a) == set(b)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= atol


@pytest.mark.parametrize("opts", [
    {"markov": "symmetric", "num_blocks": 3},
    {"whiten": "every", "num_blocks": 2},
    {"whiten": "final", "multiscale": (1, 2, 3)},
    {"residual": 0.4, "multiscale": (2, 3), "num_blocks": 4},
], ids=["symmetric-3-blocks", "whiten-every", "whiten-final-multiscale", "residual-multiscale"])
def test_one_task_equals_shuffle(spark, opts):
    kw = {"dim": 16, "iterations": 3, "init": "fx", **opts}
    shuffle, rep_s = _run(spark, ROWS, "complex::reflexive::node", engine="shuffle", **kw)
    one, rep_o = _run(spark, ROWS, "complex::reflexive::node", engine="one-task", **kw)
    assert (rep_s["engine"], rep_o["engine"]) == ("shuffle", "one-task")
    # one time per iteration (ms-rounded: 0.0 for a tiny one), inside the time the embedding took
    seconds = rep_o["iteration_seconds"]
    assert len(seconds) == 3 and all(isinstance(s, float) and s >= 0 for s in seconds)
    assert 0 < rep_o["seconds_to_embed"] and sum(seconds) <= rep_o["seconds_to_embed"] + 0.002
    # whitening: the d x d moments are summed in another order (per partition vs at once), and whitened
    # rows have norms ~sqrt(dim)
    _assert_same(one, shuffle, atol=1e-4 if "whiten" in opts else 1e-6)
    assert len(next(iter(one.values()))) == 16 * max(1, len(opts.get("multiscale", ())))


def test_bipartite_graph_with_many_blocks(spark):
    kw = {"dim": 8, "iterations": 4, "init": "fx", "num_blocks": 5}
    one, _ = _run(spark, BIPARTITE, "user complex::product", engine="one-task", **kw)
    shuffle, _ = _run(spark, BIPARTITE, "user complex::product", engine="shuffle", **kw)
    _assert_same(one, shuffle)


def test_auto_picks_one_task_when_it_fits_and_shuffle_when_not(spark):
    kw = {"dim": 8, "iterations": 2, "init": "fx"}
    small, rep = _run(spark, ROWS, "complex::reflexive::node", **kw)
    assert rep["engine"] == "one-task"
    need_gb = rep["one_task"]["estimated_bytes"] / 2**30
    assert need_gb > 0
    # a budget below the estimate (but above the largest hyperedge's block need) -> the shuffle engine
    big, rep2 = _run(spark, ROWS, "complex::reflexive::node", block_memory_gb=need_gb / 2, **kw)
    assert rep2["engine"] == "shuffle"
    _assert_same(small, big)


def test_memory_estimate_grows_with_entities_dim_and_memberships():
    base = {"entities": 1000, "dim": 64, "kept": 1, "memberships": 10_000, "hyperedges": 500, "shares": 2000}
    b = one_task_bytes(**base)
    for more in ({"entities": 2000}, {"dim": 128}, {"kept": 3}, {"memberships": 20_000}, {"shares": 4000},
                 {"hyperedges": 900}, {"residual": True}):
        assert one_task_bytes(**{**base, **more}) > b
    # one thread, two sides: the rows and their products (12), slices of 64 columns in flight (float32 runs
    # and float64 temporaries of entities and hyperedges), the compiled graph and its runs (108 a membership)
    assert b == 1000 * 64 * 12 + 1000 * 64 * 20 + 10_000 * 108 + 2000 * 160 + 500 * 64 * 20
    # whitening beside the products; K multiscale parts: 4 per earlier part, or the parts and their
    # concatenation (8 K) once that is more
    assert one_task_bytes(**{**base, "whiten": True}) - b == 1000 * 64 * 16
    assert one_task_bytes(**{**base, "kept": 2}) - b == 1000 * 64 * 4
    assert one_task_bytes(**{**base, "kept": 5}) - b == 1000 * 64 * (8 * 5 - 12)
    # one side: the second side's temporaries are not there
    assert b - one_task_bytes(**{**base, "reflexive": True}) == 1000 * 64 * 8 + 500 * 64 * 8
    # every thread has a slice in flight, and no more slices than columns
    assert one_task_bytes(**{**base, "threads": 2, "dim": 256}) - one_task_bytes(**{**base, "dim": 256}) == (
        1000 * 64 * 20 + 500 * 64 * 20)
    assert one_task_bytes(**{**base, "threads": 8}) == b  # dim 64: eight slices of 8 columns, as one of 64
    assert slice_width(256, 2) == 64 and slice_width(48, 2) == 24 and slice_width(5, 8) == 1


def test_one_task_resumes_a_shuffle_run(spark, tmp_path):
    """A run stopped after iteration 2 (shuffle engine, written to the work dir) is finished by the one-task
    engine from iteration 2 with the result of an uninterrupted run."""
    base = {"input_format": "cleora-tsv", "columns": "complex::reflexive::node", "dim": 8, "init": "fx",
            "work_dir": str(tmp_path / "work"), "keep_work": True}
    store = WorkStore(spark, base["work_dir"])
    first = run_embedding(spark, EmbedConfig(iterations=4, engine="shuffle", **base), spark_lines(spark, ROWS),
                          store=store)
    want = {r["entity"]: np.asarray(r["embedding"]) for r in first.embeddings.collect()}
    store.drop_iteration(4)
    store.drop_iteration(3)
    again = run_embedding(spark, EmbedConfig(iterations=4, engine="one-task", **base), spark_lines(spark, ROWS),
                          store=store)
    assert again.report["resumed_from_iteration"] == 2
    assert again.report["engine"] == "one-task" and len(again.report["iteration_seconds"]) == 2
    _assert_same({r["entity"]: np.asarray(r["embedding"]) for r in again.embeddings.collect()}, want)


def test_entity_estimate_is_within_three_percent(spark):
    """The HyperLogLog count that sizes the engine when the share-row bound does not fit."""
    from spark_cleora.config import parse_columns
    from spark_cleora.engine.graph import build_blocks, build_entities, count_entities, estimate_entities
    from spark_cleora.engine.hyperedges import cleora_text_to_memberships

    rows = [" ".join(h) for h in random_hyperedges(3000, 2500, seed=73)]
    cfg = EmbedConfig(input_format="cleora-tsv", columns="complex::reflexive::node")
    raw, _ = cleora_text_to_memberships(spark_lines(spark, rows), cfg)
    blocks = build_blocks(raw, reflexive=True, num_blocks=6).localCheckpoint(eager=True)
    exact = count_entities(build_entities(blocks, parse_columns("complex::reflexive::node")))
    assert abs(estimate_entities(blocks) - exact) <= 0.03 * exact


def test_python_workers_are_warmed_in_the_background(spark, monkeypatch):
    from spark_cleora.runtime import session
    from spark_cleora.runtime.session import warm_python_workers

    thread = warm_python_workers(spark, 2)
    thread.join(timeout=120)
    assert not thread.is_alive() and thread.failure is None  # the warm-up job ran and succeeded

    def broken(batches):
        raise ImportError("no engine here")
        yield from batches

    monkeypatch.setattr(session, "_importer", lambda modules: broken)  # a failing warm-up is seen as one
    thread = warm_python_workers(spark, 2)
    thread.join(timeout=120)
    assert not thread.is_alive() and "no engine here" in str(thread.failure)
    monkeypatch.setenv("SPARK_CLEORA_WARM_WORKERS", "0")
    assert warm_python_workers(spark, 2) is None


def test_one_task_narrows_its_slices_to_fit_before_giving_up(spark):
    """A budget just below the estimate with slices of 64 columns: still the one-task engine, with slices of
    32 (a smaller estimate), and the same numbers. (The width in the report is the one the task multiplied
    with: the task's own report replaces the chooser's.)"""
    from spark_cleora.engine.one_task import THREADS_CONF

    kw = {"dim": 128, "iterations": 2, "init": "fx"}
    spark.conf.set(THREADS_CONF, "2")  # two slices in flight, whatever this machine's cores
    try:
        wide, rep = _run(spark, ROWS, "complex::reflexive::node", **kw)
        assert (rep["engine"], rep["one_task"]["slice_columns"]) == ("one-task", 64)
        budget_gb = (rep["one_task"]["estimated_bytes"] - 1) / 2**30
        narrow, rep2 = _run(spark, ROWS, "complex::reflexive::node", block_memory_gb=budget_gb, **kw)
    finally:
        spark.conf.unset(THREADS_CONF)
    assert (rep2["engine"], rep2["one_task"]["slice_columns"]) == ("one-task", 32)
    assert rep2["one_task"]["estimated_bytes"] <= budget_gb * 2**30 < rep["one_task"]["estimated_bytes"]
    _assert_same(narrow, wide, atol=0)


@pytest.mark.parametrize("compiled", [False, True], ids=["scipy", "numba"])
@pytest.mark.parametrize("threads", [1, 3])
def test_iterations_are_the_same_bits_for_every_slice_width(monkeypatch, threads, compiled):
    """The one task's iterations against whole-row products (scipy's) and the shuffle engine's row
    normalisation: bit for bit, with slices of 1, 8, 64 and 70 columns (dim 70: a partial last slice),
    several threads, and row ranges of 7 rows for the normalisation (many ranges, a partial last one),
    over two sides; with scipy's path (a slice per thread) and numba's loops (the threads on ranges of
    rows of each slice)."""
    from scipy import sparse

    from spark_cleora.engine import one_task, propagate
    from spark_cleora.engine.propagate import block_product, normalize_rows

    if compiled:
        pytest.importorskip("numba")

    rng = np.random.default_rng(5)
    n_h, n, dim = 40, 53, 70
    a = sparse.random(n_h, n, density=0.1, random_state=1, format="csr", data_rvs=lambda k: np.ones(k))
    b = sparse.random(n_h, n, density=0.1, random_state=2, format="csr", data_rvs=lambda k: np.ones(k))
    sizes = np.asarray(a.sum(axis=1)).ravel() * np.asarray(b.sum(axis=1)).ravel()
    plan = {"a": a, "b": b, "scale": 1.0 / np.maximum(sizes, 1), "ids": np.arange(n)}
    pre, post = rng.random(n) + 0.5, rng.random(n) + 0.5
    x0 = rng.standard_normal((n, dim)).astype(np.float32)
    want = x0
    for _ in range(3):
        want = normalize_rows(block_product(plan, want, pre, post)).astype(np.float32)
    monkeypatch.setattr(one_task, "_NORM_ROWS", 7)
    monkeypatch.setattr(propagate, "ROWS_AT_ONCE", 7)  # (numba's whole rows: normalised 7 rows at a time)
    monkeypatch.setattr(propagate, "COMPILED_MIN_MEMBERSHIPS", 0 if compiled else 1 << 40)
    for width in (1, 8, 64, 70):
        merged = []
        monkeypatch.setattr(one_task, "merge_plans", lambda *a: merged.append(propagate.merge_plans(*a)) or merged[-1])
        kept, _, used = one_task._iterate(x0.copy(), np.full((n, dim), np.nan), [(plan, np.arange(n))], pre, post, dim=dim, first=1, last=3, keep=(3,),
                                    residual=0.0, whiten_after=frozenset(), threads=threads, slice_columns=width)
        assert ("kernels" in merged[0]) == compiled
        # (scipy's slices are at most 64 wide and narrowed so that every thread gets one)
        assert used == (width if compiled else one_task.slice_width(dim, min(threads, os.cpu_count()), min(width, 64)))
        assert kept[3].tobytes() == want.tobytes(), width


def test_whole_rows_by_numba_keep_every_options_bits(monkeypatch):
    """Residual mixing, whitening and kept iterations (the start vectors among them, so each iteration's
    rows go into a new array) on numba's whole-row path: the bits of scipy's path."""
    pytest.importorskip("numba")
    from scipy import sparse

    from spark_cleora.engine import one_task, propagate

    rng = np.random.default_rng(6)
    n_h, n, dim = 60, 80, 24
    a = sparse.random(n_h, n, density=0.1, random_state=3, format="csr", data_rvs=lambda k: np.ones(k))
    pre, post = np.ones(n), rng.random(n) + 0.5
    x0 = rng.standard_normal((n, dim)).astype(np.float32)
    monkeypatch.setattr(propagate, "ROWS_AT_ONCE", 9)
    runs = {}
    for compiled in (False, True):
        monkeypatch.setattr(propagate, "COMPILED_MIN_MEMBERSHIPS", 0 if compiled else 1 << 40)
        plan = {"a": a, "scale": 1.0 / np.maximum(np.asarray(a.sum(axis=1)).ravel(), 1) ** 2, "ids": np.arange(n)}
        runs[compiled] = one_task._iterate(x0.copy(), None, [(plan, np.arange(n))], pre, post, dim=dim, first=1,
                                           last=3, keep=(0, 2, 3), residual=0.4, whiten_after=frozenset({2}),
                                           threads=2, slice_columns=dim)[0]
    assert runs[True].keys() == runs[False].keys() == {0, 2, 3}
    assert all(runs[True][k].tobytes() == runs[False][k].tobytes() for k in (0, 2, 3))
    assert runs[True][0].tobytes() == x0.tobytes()


def test_shuffle_engine_groups_blocks_and_gives_the_same_numbers(spark, shuffle_partitions):
    """The iterations multiply groups of blocks (sized by the blocks' measured sizes, at least one per
    shuffle partition); grouped or not, the numbers are the one-task engine's."""
    kw = {"dim": 8, "iterations": 3, "init": "fx", "num_blocks": 6}
    one, _ = _run(spark, BIPARTITE, "user complex::product", engine="one-task", **kw)
    shuffle_partitions(2)
    grouped, rep = _run(spark, BIPARTITE, "user complex::product", engine="shuffle", **kw)
    assert rep["block_groups"] == 2
    # a budget below two blocks' working set keeps every block on its own
    alone, rep = _run(spark, BIPARTITE, "user complex::product", engine="shuffle", block_memory_gb=2e-5, **kw)
    assert rep["block_groups"] == 6
    _assert_same(one, grouped)
    _assert_same(one, alone)


@pytest.mark.parametrize("opts", [{}, {"weight": "w", "dedupe": True}, {"dedupe": True}], ids=["plain", "weights-dedupe", "dedupe"])
def test_constant_columns_left_out_of_the_graph_build_give_the_same_blocks(spark, opts):
    """The event table's constant raw columns (side, column, and weight / rows per row when unused)
    are not sent to the build's Python tasks; the blocks are the same rows as with every column sent."""
    from spark_cleora.engine.graph import RAW_DEFAULTS, build_blocks, keyed_memberships
    from spark_cleora.engine.hyperedges import constant_columns, events_to_memberships

    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{i}", float(1 + w)) for u, i, w in
            zip(rng.integers(0, 60, 800), np.minimum(rng.zipf(1.3, 800), 90), rng.integers(0, 4, 800))]
    rows += [(None, "i1", 1.0), ("u1", "", 1.0)]  # rejected rows: still counted
    cfg = EmbedConfig(input_format="dataframe", hyperedge="user", entity="item", **opts)
    raw, _ = events_to_memberships(spark.createDataFrame(rows, "user string, item string, w double"), cfg)
    constant = constant_columns(cfg)
    assert set(constant) == {"side", "col"} | ({"weight"} if "weight" not in opts else set()) | (
        {"_rows"} if not opts.get("dedupe") else set())
    assert not set(constant) & set(keyed_memberships(raw, 3, constant).columns)

    def blocks(constant):
        df = build_blocks(raw, reflexive=True, num_blocks=3, constant=constant).drop("plan")
        plans = build_blocks(raw, reflexive=True, num_blocks=3, constant=constant).filter("plan is not null")
        return sorted(map(tuple, df.collect()), key=repr), sorted(r["plan"] for r in plans.select("plan").collect())

    assert blocks(constant) == blocks(())
    with pytest.raises(ValueError, match="not in"):
        keyed_memberships(raw, 3, ("entity",))
    with pytest.raises(ValueError, match="weight"):  # a column left out must be declared constant
        keyed_memberships(raw.drop("weight"), 3, ("side", "col"))
    assert RAW_DEFAULTS["weight"] == 1.0 and RAW_DEFAULTS["side"] == RAW_DEFAULTS["col"] == 0


def test_narrow_row_batches_lifts_the_byte_check_and_puts_the_session_back(spark):
    """Inside: batches cut by row count only (maxBytesPerBatch = Int.MaxValue). After: an unset conf is
    unset again, a set one has its value back, also when the block raised."""
    from spark_cleora.runtime.session import UNCHECKED_BATCH_BYTES, narrow_row_batches

    (key, lifted), = UNCHECKED_BATCH_BYTES.items()
    assert lifted == str(2**31 - 1)
    spark.conf.unset(key)
    with narrow_row_batches(spark):
        assert spark.conf.get(key) == lifted
    assert spark.conf.get(key, None) is None
    spark.conf.set(key, "1048576")
    try:
        with pytest.raises(ZeroDivisionError), narrow_row_batches(spark):
            assert spark.conf.get(key) == lifted
            1 / 0
        assert spark.conf.get(key) in ("1048576", "1048576b")
    finally:
        spark.conf.unset(key)
