"""SipHash-1-3 start vectors as compiled loops (numba, the optional ``fast`` extra).

The same function as :mod:`spark_cleora.engine.start_vectors`' numpy rounds, bit for bit: one loop
over the entities x dimensions instead of ~110 numpy passes over temporaries (386k entities at dim 256:
0.2 s on 2 threads instead of 4-5 s; the numpy passes also spend a second or two of kernel time on
the two threads' handovers of Python's lock). The loops hold no Python lock (``nogil``), so the threads
of :func:`~spark_cleora.engine.start_vectors.init_for_names` run them side by side. Compiled once per
machine (``cache``: numba keeps the machine code beside this file, or in its user cache directory
where this one is read-only).

Imported only through :func:`spark_cleora.engine.start_vectors.compiled_siphash`: without numba the
numpy rounds give the same numbers.
"""

from __future__ import annotations

import numba
import numpy as np

_K0, _K1, _K2, _K3 = (numba.uint64(k) for k in (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261,
                                                0x7465646279746573))
_LENGTH = numba.uint64(8 << 56)  # message length 8 in the top byte, no tail bytes
_LOW = numba.int64((1 << 23) - 1)
_MAX_HASH = numba.float32(1 << 23)


@numba.njit(inline="always")
def _rotl(x, b):
    return (x << numba.uint64(b)) | (x >> numba.uint64(64 - b))


@numba.njit(inline="always")
def _sipround(v0, v1, v2, v3):
    v0 += v1
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 += v3
    v3 = _rotl(v3, 16) ^ v2
    v0 += v3
    v3 = _rotl(v3, 21) ^ v0
    v2 += v1
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


@numba.njit(inline="always")
def _sip13(m):
    """SipHash-1-3, zero key, of one little-endian u64 word (Rust's ``DefaultHasher.write_i64``)."""
    v0, v1, v2, v3 = _sipround(_K0, _K1, _K2, _K3 ^ m)
    v0 ^= m
    v3 ^= _LENGTH
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= _LENGTH
    v2 ^= numba.uint64(0xFF)
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@numba.njit(nogil=True, cache=True)
def siphash13_into(words, out):
    """``out[i]`` = SipHash-1-3 of ``words[i]`` (both ``uint64``, one dimension)."""
    for i in range(words.shape[0]):
        out[i] = _sip13(words[i])


@numba.njit(nogil=True, cache=True)
def siphash_rows_into(hashes, offsets, out):
    """``out[i, j]`` (float32) = the start value of entity hash ``hashes[i]`` in dimension ``j``:
    SipHash-1-3 of ``hashes[i] + offsets[j]`` (wrapping), its truncated remainder by 2**23 (Rust's ``%``
    for i64: the sign of the hash), divided by 2**23."""
    for i in range(out.shape[0]):
        h = hashes[i]
        for j in range(out.shape[1]):
            r = numba.int64(_sip13(h + offsets[j]))
            low = r & _LOW
            if r < 0 and low != 0:
                low -= _LOW + 1
            out[i, j] = numba.float32(low) / _MAX_HASH
