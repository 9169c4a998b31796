"""Start vectors: bit-exact with both pycleora hash families."""

from __future__ import annotations

import numpy as np
import pycleora
import pytest
from oracle import PYCLEORA2_PYTHON

from spark_cleora.engine import start_vectors
from spark_cleora.engine.start_vectors import init_for_names, siphash13_u64
from spark_cleora.engine.vectors import from_list_array, pack, to_list_array, unpack

NAMES = ["a", "b", "c", "d", "e", "ü", "日本語", "🙂", "", "x" * 300, "tab\tin", "user 1"]

# pycleora 2.0.0 initialize_deterministically(4, 0) of fixture A (spec §6.1)
SIPHASH_FIXTURE_A = np.array(
    [[-0.33122218, -0.28564835, 0.66401136, -0.5282717],
     [-0.8380135, 0.29640532, -0.79565895, 0.05938363],
     [0.3897692, 0.87543, 0.75695384, 0.90653753],
     [-0.677961, 0.4227519, 0.9858401, -0.32754028],
     [-0.8866724, -0.78439844, 0.0733254, 0.7693727]], dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 1, 7, -3, 2**40, -(2**62)])
@pytest.mark.parametrize("dim", [1, 4, 33, 256])
def test_fx_init_is_bit_exact_with_pycleora3(seed, dim):
    rows = [" ".join(n for n in NAMES if n and " " not in n and "\t" not in n)]
    g = pycleora.SparseMatrix.from_iterator(iter(rows), "complex::reflexive::x", num_workers=1)
    ref = g.initialize_deterministically(dim, seed)
    ours = init_for_names(list(g.entity_ids), dim, seed=seed, method="fx")
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


@pytest.fixture(params=["compiled", "numpy"])
def siphash_path(request, monkeypatch):
    """Each SipHash test runs on both paths: numba's compiled loops and the numpy rounds."""
    if request.param == "compiled":
        pytest.importorskip("numba")
        assert start_vectors.compiled_siphash() is not None
        monkeypatch.setattr(start_vectors, "COMPILED_MIN_VALUES", 0)  # even for a handful of values
    else:
        monkeypatch.setattr(start_vectors, "compiled_siphash", lambda: None)
    return request.param


def test_siphash_init_matches_pycleora2_fixture(siphash_path):
    ours = init_for_names(list("abcde"), 4, seed=0, method="siphash")
    # the spec prints 8 significant digits; bit-exactness is checked against the wheel below
    np.testing.assert_allclose(ours, SIPHASH_FIXTURE_A, rtol=0, atol=1e-8)
    seeded = init_for_names(["a"], 4, seed=7, method="siphash")[0]
    np.testing.assert_allclose(seeded, [-0.545465, -0.1005164, 0.904044, -0.0974625], atol=5e-7)


@pytest.mark.skipif(not PYCLEORA2_PYTHON, reason="no pycleora 2.0.0 interpreter (SPARK_CLEORA_PYCLEORA2_PYTHON)")
def test_siphash_init_is_bit_exact_with_pycleora2(siphash_path):
    import json
    import subprocess

    names = [n for n in NAMES if n and " " not in n and "\t" not in n]
    script = (
        "import json,sys; from pycleora import SparseMatrix; r=json.load(sys.stdin);"
        "g=SparseMatrix.from_iterator(iter([' '.join(r['names'])]),'complex::reflexive::x',num_workers=1);"
        "print(json.dumps({'ids':list(g.entity_ids),'v':{str(s):g.initialize_deterministically(64,s).tolist() "
        "for s in r['seeds']}}))"
    )
    seeds = [0, 3, -5, 2**40]
    res = subprocess.run([PYCLEORA2_PYTHON, "-c", script], input=json.dumps({"names": names, "seeds": seeds}),
                         capture_output=True, text=True, check=True)
    out = json.loads(res.stdout)
    for s in seeds:
        ref = np.asarray(out["v"][str(s)], dtype=np.float32)
        np.testing.assert_array_equal(init_for_names(out["ids"], 64, seed=s, method="siphash"), ref)


def test_siphash13_matches_scalar_reference(siphash_path):
    """The vectorised SipHash-1-3 equals a plain scalar transcription of the algorithm."""
    mask = (1 << 64) - 1

    def rotl(x, b):
        return ((x << b) | (x >> (64 - b))) & mask

    def rnd(v0, v1, v2, v3):
        v0 = (v0 + v1) & mask; v1 = rotl(v1, 13) ^ v0; v0 = rotl(v0, 32)  # noqa: E702
        v2 = (v2 + v3) & mask; v3 = rotl(v3, 16) ^ v2  # noqa: E702
        v0 = (v0 + v3) & mask; v3 = rotl(v3, 21) ^ v0  # noqa: E702
        v2 = (v2 + v1) & mask; v1 = rotl(v1, 17) ^ v2; v2 = rotl(v2, 32)  # noqa: E702
        return v0, v1, v2, v3

    def sip13(m):
        v = [0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573]
        v[3] ^= m
        v = list(rnd(*v))
        v[0] ^= m
        b = 8 << 56
        v[3] ^= b
        v = list(rnd(*v))
        v[0] ^= b
        v[2] ^= 0xFF
        for _ in range(3):
            v = list(rnd(*v))
        return v[0] ^ v[1] ^ v[2] ^ v[3]

    ms = [0, 1, 2, mask, 1 << 63, 0x0123456789ABCDEF, *range(3, 200, 7), *(mask - k for k in range(0, 300, 11))]
    got = siphash13_u64(np.array(ms, dtype=np.uint64))
    assert [int(x) for x in got] == [sip13(m) for m in ms]


def test_init_values_in_open_interval_and_deterministic():
    v1 = init_for_names([f"e{i}" for i in range(1000)], 16)
    v2 = init_for_names([f"e{i}" for i in range(1000)], 16)
    np.testing.assert_array_equal(v1, v2)
    assert np.all(np.abs(v1) < 1.0)
    # SipHash dims are close to independent (the reason it is the default)
    corr = np.corrcoef(v1.T)
    assert np.abs(corr[~np.eye(16, dtype=bool)]).mean() < 0.06


def test_vector_encodings_round_trip():
    import pyarrow as pa

    m = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(from_list_array(to_list_array(m), 3), m)
    np.testing.assert_array_equal(from_list_array(to_list_array(m).slice(1, 2), 3), m[1:3])
    np.testing.assert_array_equal(unpack(pack(m), 3), m)
    np.testing.assert_array_equal(unpack(pack(m).slice(1, 2), 3), m[1:3])
    np.testing.assert_array_equal(unpack(pa.chunked_array([pack(m[:1]), pack(m[1:])]), 3), m)
    assert pack(m).type == pa.binary() and len(pack(m)[0].as_py()) == 12
    with pytest.raises(ValueError, match="expected 4"):
        unpack(pack(m), 4)


def test_compiled_and_numpy_siphash_give_the_same_start_vectors(monkeypatch):
    """numba's loops and the numpy rounds: the same bits over many entities, dimensions and seeds (both
    signs of the hash, the remainder's edge), on threads and into a given array."""
    pytest.importorskip("numba")
    monkeypatch.setattr(start_vectors, "COMPILED_MIN_VALUES", 0)
    names = [f"n{i}" for i in range(3000)] + NAMES
    words = np.random.default_rng(2).integers(0, 2**64 - 1, size=50_000, dtype=np.uint64, endpoint=True)
    compiled = [init_for_names(names, d, seed=s, threads=t) for d, s, t in ((256, 0, 2), (33, -9, 1), (1, 2**40, 3))]
    hashed = siphash13_u64(words)
    monkeypatch.setattr(start_vectors, "compiled_siphash", lambda: None)
    numpy = [init_for_names(names, d, seed=s, threads=t) for d, s, t in ((256, 0, 2), (33, -9, 1), (1, 2**40, 3))]
    for a, b in zip(compiled, numpy):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(hashed, siphash13_u64(words))


def test_numba_only_where_it_repays_its_import(monkeypatch):
    """numba's loops run from COMPILED_MIN_VALUES start values of SipHash (not for FxHash, nor without numba)."""
    pytest.importorskip("numba")
    big = start_vectors.COMPILED_MIN_VALUES
    assert start_vectors.use_compiled("siphash", big) and not start_vectors.use_compiled("siphash", big - 1)
    assert not start_vectors.use_compiled("fx", big)
    monkeypatch.setattr(start_vectors, "compiled_siphash", lambda: None)
    assert not start_vectors.use_compiled("siphash", big)


def test_threads_give_the_same_start_vectors():
    names = [f"e{i}" for i in range(1001)]
    one = init_for_names(names, 16, seed=3)
    np.testing.assert_array_equal(init_for_names(names, 16, seed=3, threads=3), one)
    np.testing.assert_array_equal(init_for_names(names[:1], 16, seed=3, threads=4), one[:1])


def test_fx_init_is_bit_exact_with_pycleora3_over_many_chunks():
    """Thousands of entities: the init works through chunks of rows (128 at dim 256); every chunk and the
    partial last one are pycleora's numbers."""
    rows = [" ".join(f"n{5 * i + j}" for j in range(5)) for i in range(700)]
    g = pycleora.SparseMatrix.from_iterator(iter(rows), "complex::reflexive::x", num_workers=1)
    ref = g.initialize_deterministically(256, 11)
    np.testing.assert_array_equal(init_for_names(list(g.entity_ids), 256, seed=11, method="fx"), ref)


def test_rust_remainder_without_a_division():
    """The remainder by 2**23 that the init takes, with bit operations: Rust's truncated ``%`` (np.fmod),
    including i64::MIN, exact multiples, -1 and values either side of them."""
    from spark_cleora.engine.start_vectors import _rust_rem

    edges = np.array([-(2**63), 2**63 - 1, -(2**23), 2**23, -1, 0, 1, -(2**23) - 1, 2**23 + 1, -(2**24), -(2**23) + 1],
                     dtype=np.int64)
    x = np.concatenate([edges, np.random.default_rng(3).integers(-(2**63), 2**63 - 1, size=200_000, dtype=np.int64)])
    np.testing.assert_array_equal(_rust_rem(x), np.fmod(x, 2**23))


def test_a_numba_that_cannot_compile_leaves_the_numpy_rounds(monkeypatch):
    """numba present but failing to compile (an unsupported machine or release): a warning, then numpy's
    rounds, the same numbers; the run does not fail."""
    pytest.importorskip("numba")
    from spark_cleora.engine import siphash

    want = init_for_names(["a", "b"], 8, seed=1)

    def broken(*args):
        raise RuntimeError("cannot compile here")

    monkeypatch.setattr(siphash, "siphash_rows_into", broken)
    start_vectors.compiled_siphash.cache_clear()
    try:
        assert start_vectors.compiled_siphash() is None
        assert not start_vectors.use_compiled("siphash", start_vectors.COMPILED_MIN_VALUES)
        np.testing.assert_array_equal(init_for_names(["a", "b"], 8, seed=1), want)
    finally:
        start_vectors.compiled_siphash.cache_clear()
