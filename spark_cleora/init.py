"""Deterministic start vectors, bit-exact with pycleora.

Every value is a pure function of ``(entity, dimension, seed)``::

    h   = XXH64(utf8(entity), seed=0)                   # u64
    u   = wrap_i64(i64(h) + dim + seed)
    H   = SipHash-1-3(k0=0, k1=0, le_bytes(u))           # init="siphash"  (pycleora 2.0.0)
        = u * 0x517cc1b727220a95 mod 2**64                # init="fx"       (pycleora 3.x)
    x   = f32(trunc_rem(i64(H), 2**23)) / 2**23           # uniform on (-1, 1)

so the init parallelises over entities with no coordination. The per-dimension hashes are computed
for a whole batch at once with numpy ``uint64`` arithmetic (which wraps, like Rust's release build);
only the one XXH64 per entity name is a Python call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import xxhash

INIT_METHODS = ("siphash", "fx")

_MAX_HASH = 1 << 23
_FX_K = np.uint64(0x517CC1B727220A95)
_MASK64 = (1 << 64) - 1


def entity_hashes(names: Sequence[str]) -> np.ndarray:
    """XXH64 (seed 0) of each name's UTF-8 bytes, as ``uint64``."""
    out = np.empty(len(names), dtype=np.uint64)
    digest = xxhash.xxh64_intdigest
    for i, name in enumerate(names):
        out[i] = digest(name.encode("utf-8"))
    return out


def _rotl(x: np.ndarray, b: int) -> np.ndarray:
    return (x << np.uint64(b)) | (x >> np.uint64(64 - b))


def _sipround(v0, v1, v2, v3):
    v0 += v1
    v1 = _rotl(v1, 13)
    v1 ^= v0
    v0 = _rotl(v0, 32)
    v2 += v3
    v3 = _rotl(v3, 16)
    v3 ^= v2
    v0 += v3
    v3 = _rotl(v3, 21)
    v3 ^= v0
    v2 += v1
    v1 = _rotl(v1, 17)
    v1 ^= v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13_u64(m: np.ndarray) -> np.ndarray:
    """SipHash-1-3 with a zero key of one little-endian u64 word (Rust's ``DefaultHasher.write_i64``)."""
    m = np.asarray(m, dtype=np.uint64)
    v0 = np.full_like(m, 0x736F6D6570736575)
    v1 = np.full_like(m, 0x646F72616E646F6D)
    v2 = np.full_like(m, 0x6C7967656E657261)
    v3 = np.full_like(m, 0x7465646279746573)
    with np.errstate(over="ignore"):
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
        b = np.uint64(8 << 56)  # message length 8 in the top byte, no tail bytes
        v3 ^= b
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= b
        v2 ^= np.uint64(0xFF)
        for _ in range(3):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def init_vectors(hashes: np.ndarray, dim: int, *, seed: int = 0, method: str = "siphash") -> np.ndarray:
    """Start vectors ``float32[n, dim]`` for entities with XXH64 ``hashes`` (``uint64[n]``)."""
    if method not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {method!r}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    offsets = np.arange(dim, dtype=np.uint64) + np.uint64(seed & _MASK64)
    with np.errstate(over="ignore"):
        u = hashes[:, None] + offsets[None, :]  # wrapping add == two's-complement i64 add
        if method == "fx":
            h = u * _FX_K
        else:
            h = siphash13_u64(u)
    r = np.fmod(h.view(np.int64), _MAX_HASH)  # truncated remainder, sign of the dividend (Rust %)
    return r.astype(np.float32) / np.float32(_MAX_HASH)


def init_for_names(names: Sequence[str], dim: int, *, seed: int = 0, method: str = "siphash") -> np.ndarray:
    """Start vectors for entity names (what ``pycleora``'s ``initialize_deterministically`` returns)."""
    return init_vectors(entity_hashes(names), dim, seed=seed, method=method)


def vectors_to_arrow(mat: np.ndarray) -> pa.ListArray:
    """``float32[n, d]`` -> Arrow ``list<float>`` without a per-row Python loop."""
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    n, d = mat.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1)))


def arrow_to_vectors(col: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """Arrow ``list<float>`` (no nulls, every list of length ``dim``) -> ``float32[n, dim]``."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if len(col) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(col), dim)


def init_batches(
    batches: Iterable[pa.RecordBatch], *, dim: int, seed: int, method: str
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: ``(id, entity)`` batches -> ``(id, vec)`` start vectors."""
    for batch in batches:
        names = batch.column("entity").to_pylist()
        vecs = init_for_names(names, dim, seed=seed, method=method)
        yield pa.RecordBatch.from_arrays([batch.column("id"), vectors_to_arrow(vecs)], names=["id", "vec"])
