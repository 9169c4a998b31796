"""EMDE coder: DLSH codes against a numpy reference, determinism, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from spark_cleora.config import BadInputError, ConfigError
from spark_cleora.emde import dlsh
from spark_cleora.emde.coder import fit_coder, item_codes, load_coder, random_vectors, read_codes, save_coder

N, K = 5, 4
W = 1 << K


def emb_frame(spark, mat, prefix="i"):
    rows = [(f"{prefix}{k}", mat[k].tolist()) for k in range(len(mat))]
    return spark.createDataFrame(rows, "entity string, embedding array<float>")


def reference_codes(mat, directions, *, offset=0):
    """Section 8.1/8.2 of the EMDE spec: standardise, project, median bias, K bits -> bucket."""
    x = mat.astype(np.float64)
    z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    p = z @ directions
    bits = (p > np.median(p, axis=0)).reshape(len(x), N, K).astype(np.int64)
    return offset + np.arange(N) * W + bits @ (1 << np.arange(K - 1, -1, -1))


@pytest.fixture(scope="module")
def sources():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(120, 12)).astype(np.float32)
    a[:, 3] = 0.25  # a constant dimension: std 0 must not divide by zero
    b = rng.normal(size=(120, 6)).astype(np.float32)
    return a, b


@pytest.fixture(scope="module")
def fitted(spark, sources):
    a, b = sources
    dfs = [emb_frame(spark, a), emb_frame(spark, b).filter("entity != 'i0'")]  # i0 lacks source 2
    coder = fit_coder(dfs, names=["a", "b"], depth=N, bits=K, seed=11)
    codes = {r["item"]: r["codes"] for r in item_codes(coder, dfs).collect()}
    return coder, dfs, codes


def test_codes_match_numpy_reference_with_source_offsets(fitted, sources):
    coder, _, codes = fitted
    a, b = sources
    assert coder.width == W and coder.n_codes == 2 * N and coder.length == 2 * N * W
    assert set(codes) == {f"i{k}" for k in range(120)}, "items missing from a source are kept"
    # i0 lacks source b: its b codes come from its seeded random vector in b's standardised space
    b0 = coder.sources[1]
    rand = b0.mean + b0.scale * random_vectors(["i0"], seed=11, source_index=1, dim=6)
    np.testing.assert_array_equal(codes["i0"][N:], dlsh.encode(b0, rand, depth=N, bits=K)[0])
    np.testing.assert_array_equal(codes["i0"][:N], reference_codes(a, coder.sources[0].directions)[0])
    ours = np.array([codes[f"i{k}"] for k in range(1, 120)])
    ref_a = reference_codes(a, coder.sources[0].directions)[1:]
    ref_b = reference_codes(b[1:], coder.sources[1].directions, offset=N * W)
    np.testing.assert_array_equal(ours, np.concatenate([ref_a, ref_b], axis=1))
    assert ours.min() >= 0 and ours.max() < coder.length
    for n in range(2 * N):  # each code lies in its own block
        assert np.all(ours[:, n] // W == n)
    # fitted on 120 / 119 items; the median splits every hyperplane of source a exactly 60/60
    assert [s.fitted_on for s in coder.sources] == [120, 119]
    p = dlsh.project(a, mean=coder.sources[0].mean, scale=coder.sources[0].scale,
                     directions=coder.sources[0].directions)
    np.testing.assert_array_equal((p > coder.sources[0].biases).sum(0), np.full(N * K, 60))


def test_deterministic_for_a_seed_and_persisted_exactly(spark, fitted, tmp_path):
    coder, dfs, codes = fitted
    again = fit_coder(dfs, names=["a", "b"], depth=N, bits=K, seed=11)
    assert again.coder_id == coder.coder_id
    assert not np.array_equal(dlsh.draw_directions(dim=12, depth=N, bits=K, seed=12, source_index=0),
                              coder.sources[0].directions)
    out = str(tmp_path / "coder")
    manifest = save_coder(spark, coder, item_codes(coder, dfs), out)
    assert manifest["items_coded"] == 120 and manifest["coder_id"] == coder.coder_id
    loaded = load_coder(spark, out)
    assert loaded.coder_id == coder.coder_id
    for s0, s1 in zip(coder.sources, loaded.sources):
        np.testing.assert_array_equal(s0.directions, s1.directions)
        np.testing.assert_array_equal(s0.biases, s1.biases)
    assert {r["item"]: r["codes"] for r in read_codes(spark, out).collect()} == codes


def test_random_quantile_biases_sit_at_their_levels(spark, sources):
    a, _ = sources
    coder = fit_coder([emb_frame(spark, a)], depth=N, bits=K, seed=3, bias="random-quantile")
    s = coder.sources[0]
    levels = dlsh.quantile_levels(depth=N, bits=K, seed=3, source_index=0, bias="random-quantile")
    above = (dlsh.project(a, mean=s.mean, scale=s.scale, directions=s.directions) > s.biases).sum(0)
    # the bias is the inverted-CDF quantile (moved midway to the next value): n - ceil(u n) items above
    np.testing.assert_array_equal(above, len(a) - np.ceil(levels * len(a)).astype(int))


def test_bad_embeddings_are_refused(spark):
    dup = spark.createDataFrame([("x", [1.0, 2.0]), ("x", [2.0, 1.0]), ("y", [0.0, 1.0])],
                                "entity string, embedding array<float>")
    with pytest.raises(BadInputError, match="1 duplicate entities"):
        fit_coder([dup], depth=2, bits=2)
    ragged = spark.createDataFrame([("x", [1.0, 2.0]), ("y", [2.0]), ("z", None)], "entity string, embedding array<float>")
    with pytest.raises(BadInputError, match=r"null embedding.*different lengths"):
        fit_coder([ragged], depth=2, bits=2)
    with pytest.raises(ConfigError, match="bits must be <= 16"):
        fit_coder([dup], depth=2, bits=17)


def test_biases_never_touch_a_fitted_projection():
    at = np.array([1.0, 2.0, 5.0])
    above = np.array([3.0, np.nan, 5.0])
    b = dlsh.biases_between(at, above)
    assert b[0] == 2.0 and b[1] > 2.0 and b[2] > 5.0


def test_partial_moments_merge_to_the_exact_moments():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(101, 5))
    parts = [dlsh.batch_moments(x[a:b]) for a, b in ((0, 10), (10, 10), (10, 64), (64, 101))]
    n, mean, m2 = dlsh.merge_moments(parts)
    assert n == 101
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(m2 / n), x.std(0), rtol=1e-12)
