"""Vector encodings between numpy and Arrow/Spark.

Inside the engine a vector is a ``binary`` value of ``dim`` little-endian float32 (``PACKED``): Spark
shuffles, caches and writes it as one opaque blob, and numpy reads a whole Arrow batch of them with one
``frombuffer``. Measured on 170k x 256 vectors (2 cores): writing Parquet took 1.3 s packed vs 3.3 s as
``array<float>``, read+shuffle+write 2.0 s vs 7.4 s — Spark's nested-array Parquet and Arrow
converters work value by value. Outputs use ``array<float>`` (the portable schema; Spark 4.3's
``vector_*`` functions take it), converted once at the end.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PACKED = "binary"
_F32 = np.dtype("<f4")



def to_list_array(mat: np.ndarray) -> pa.ListArray:
    """``float32[n, d]`` -> Arrow ``list<float>`` without a per-row Python loop."""
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    n, d = mat.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1)))


def from_list_array(col: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """Arrow ``list<float>`` (no nulls, every list of length ``dim``) -> ``float32[n, dim]``."""
    col = _one_chunk(col)
    if len(col) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(col), dim)


def pack(mat: np.ndarray) -> pa.BinaryArray:
    """``[n, d]`` -> Arrow ``binary``, each value ``d`` little-endian float32, sharing one buffer."""
    mat = np.ascontiguousarray(mat, dtype=_F32)
    n, d = mat.shape
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(d * 4)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(mat)])


def unpack(col: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """Arrow ``binary`` of packed float32 -> ``float32[n, dim]`` (a view when possible)."""
    col = _one_chunk(col)
    n = len(col)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if col.null_count:
        raise ValueError("packed vectors must not be null")
    _, offsets_buf, data_buf = col.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=col.offset * 4)
    start, end = int(offsets[0]), int(offsets[-1])
    if end - start != n * dim * 4:
        raise ValueError(f"packed vectors have {(end - start) / max(n, 1) / 4:g} floats each, expected {dim}")
    return np.frombuffer(data_buf, dtype=_F32, count=n * dim, offset=start).reshape(n, dim)


def _one_chunk(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col
