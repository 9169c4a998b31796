"""Embedding options beyond plain Cleora: --residual, --multiscale, --init-vectors (issue 4)."""

from __future__ import annotations

import numpy as np
import pycleora
import pytest
from helpers import run_text, spark_lines
from oracle import random_hyperedges

from spark_cleora.cli import build_parser, embed_config_from_args
from spark_cleora.config import EmbedConfig
from spark_cleora.engine.embed import run_embedding
from spark_cleora.errors import ConfigError, InitVectorsError
from spark_cleora.engine.start_vectors import init_for_names

ROWS = [" ".join(h) for h in random_hyperedges(300, 120, seed=43)]
COLS = "complex::reflexive::node"
DIM = 16


def _graph():
    return pycleora.SparseMatrix.from_iterator(iter(ROWS), COLS, num_workers=1)


def _gram(m):
    m = np.asarray(m, dtype=np.float64)
    return m @ m.T


def test_residual_and_multiscale_match_pycleora(spark):
    """--residual 0.3 --multiscale 1,3 = [pycleora embed(residual_weight=0.3) after 1 | after 3 iterations]."""
    g = _graph()
    names = list(g.entity_ids)
    ref = [pycleora.embed(g, feature_dim=DIM, num_iterations=k, whiten=False, residual_weight=0.3, num_workers=1)
           for k in (1, 3)]
    plain = pycleora.embed(g, feature_dim=DIM, num_iterations=3, whiten=False, num_workers=1)
    ours = run_text(spark, ROWS, COLS, dim=DIM, iterations=3, init="fx", residual=0.3, multiscale=(1, 3))
    got = np.array([ours[n][0] for n in names])
    assert got.shape == (len(names), 2 * DIM)
    np.testing.assert_allclose(got[:, :DIM], ref[0], atol=2e-5)
    np.testing.assert_allclose(got[:, DIM:], ref[1], atol=2e-5)
    # each part is unit length, as pycleora's embed_multiscale leaves them (no re-normalisation)
    np.testing.assert_allclose(np.linalg.norm(got[:, DIM:], axis=1), 1.0, atol=1e-5)
    assert np.abs(got[:, DIM:] - plain).max() > 1e-2  # the residual changed the result


def test_multiscale_with_whitening_matches_pycleora_embed_multiscale(spark):
    g = _graph()
    names = list(g.entity_ids)
    ref = pycleora.embed_multiscale(g, feature_dim=DIM, scales=[1, 2], whiten=True, num_workers=1)
    ours = run_text(spark, ROWS, COLS, dim=DIM, iterations=2, init="fx", whiten="every", multiscale=(1, 2))
    got = np.array([ours[n][0] for n in names])
    assert got.shape == ref.shape == (len(names), 2 * DIM)
    for part in (slice(0, DIM), slice(DIM, 2 * DIM)):  # whitening fixes columns only up to sign
        np.testing.assert_allclose(_gram(got[:, part]), _gram(ref[:, part]), atol=2e-3)


def test_init_vectors_replace_the_hash_init_where_given(spark, tmp_path):
    g = _graph()
    names = list(g.entity_ids)
    rng = np.random.default_rng(7)
    given = {n: rng.normal(size=DIM).astype(np.float32) for n in names[:40]}
    rows = [(n, v.tolist()) for n, v in given.items()] + [("not-in-graph", [1.0] * DIM)]
    path = str(tmp_path / "init.parquet")
    spark.createDataFrame(rows, "entity string, vector array<float>").write.parquet(path)
    cfg = EmbedConfig(input_format="cleora-tsv", columns=COLS, dim=DIM, iterations=1, init="siphash",
                      init_vectors=path, checkpoint="local")
    res = run_embedding(spark, cfg, spark_lines(spark, ROWS), store=None)
    ours = {r["entity"]: np.asarray(r["embedding"]) for r in res.embeddings.collect()}
    assert res.report["init_vectors"] == {"rows": 41, "used": 40, "unknown": 1}
    x0 = init_for_names(names, DIM, method="siphash")
    hashed_only = g.left_markov_propagate(x0, num_workers=1)
    for i, n in enumerate(names[:40]):
        x0[i] = given[n]
    want = g.left_markov_propagate(x0, num_workers=1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = np.array([ours[n] for n in names])
    np.testing.assert_allclose(got, want, atol=1e-5)
    hashed_only /= np.linalg.norm(hashed_only, axis=1, keepdims=True)
    assert np.abs(got - hashed_only).max() > 0.1  # the given vectors were used


@pytest.mark.parametrize("rows, match", [
    ([("a", [1.0, 2.0])], r"exactly 16 finite numbers.*entity 'a' with length 2"),
    ([("a", [1.0] * DIM), ("a", [2.0] * DIM)], "duplicate row.*'a' appears 2 times"),
    ([("a", [float("nan")] * DIM)], "finite"),
])
def test_bad_init_vectors_are_refused_with_a_clear_error(spark, tmp_path, rows, match):
    path = str(tmp_path / "bad.parquet")
    spark.createDataFrame(rows, "entity string, vector array<double>").write.parquet(path)
    cfg = EmbedConfig(input_format="cleora-tsv", columns=COLS, dim=DIM, iterations=1, init_vectors=path,
                      checkpoint="local")
    with pytest.raises(InitVectorsError, match=match):
        run_embedding(spark, cfg, spark_lines(spark, ["a b", "b c"]), store=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"residual": 1.0}, "residual"),
    ({"residual": -0.1}, "residual"),
    ({"multiscale": (2, 1), "iterations": 2}, "increasing"),
    ({"multiscale": (1, 2), "iterations": 4}, "last must equal --iterations"),
    ({"multiscale": "1,x"}, "comma-separated"),
    ({"multiscale": (0, 4)}, ">= 1"),
])
def test_option_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EmbedConfig(hyperedge="u", entity="i", **kwargs)


def test_cli_flags_reach_the_config():
    ns = build_parser().parse_args(["embed", "e.parquet", "--hyperedge", "u", "--entity", "i", "--output", "o",
                                    "--residual", "0.25", "--multiscale", "1,2,4", "--init-vectors", "f.parquet"])
    cfg = embed_config_from_args(ns)
    assert (cfg.residual, cfg.multiscale, cfg.init_vectors) == (0.25, (1, 2, 4), "f.parquet")
    assert cfg.output_dim == 3 * 256


def test_rewritten_init_vectors_change_the_resume_fingerprint(tmp_path):
    """Resuming must not reuse iteration 0 made from an older --init-vectors table."""
    import time

    from spark_cleora.engine.embed import fingerprint

    table = tmp_path / "vectors.parquet"
    table.mkdir()
    (table / "part-0.parquet").write_bytes(b"v1")
    events = tmp_path / "events.csv"
    events.write_text("u,i\n")
    cfg = EmbedConfig(inputs=(str(events),), hyperedge="u", entity="i", input_format="csv",
                      init_vectors=str(table), output=str(tmp_path / "out"))
    before = fingerprint(cfg)
    assert before == fingerprint(cfg)
    time.sleep(1.1)  # mtimes have one-second resolution in the fingerprint
    (table / "part-0.parquet").write_bytes(b"v2 longer")
    assert fingerprint(cfg)["init_vectors_files"] != before["init_vectors_files"]
    assert "init_vectors_files" not in fingerprint(cfg.replace(init_vectors=None))
