"""The products' float32 runs as compiled loops (numba, the optional ``fast`` extra).

The same sums as :func:`~spark_cleora.engine.propagate.block_product`'s scipy path, bit for bit: each
hyperedge's row (and each entity's column, in hyperedge order) is cut into runs of at most ``terms``
memberships, each run summed in float32 (a product, then an add: no fused multiply-add, as in scipy's
kernel), the runs after the first summed in float64 from zero and added to the first, then scaled in
float64. Where scipy's path makes the runs into matrices of their own and multiplies them
(:func:`~spark_cleora.engine.propagate.prepare_plan`: ~1 s for the 8M memberships of the 10M-event
bench graph), these loops cut the rows as they go; and they sum a whole row's dimensions at once, each
member's vector read once as one contiguous row, the sums kept in small buffers instead of a scattered
float32 output: on that graph an iteration's products take ~0.7 s on 2 threads instead of ~1.45 s.

Driver/executor split: only tasks call these (inside ``mapInArrow`` functions); the loops hold no
Python lock (``nogil``), so a task's threads run them on separate row ranges side by side. Compiled once
per machine (``cache``), like :mod:`spark_cleora.engine.siphash`. Imported only through
:func:`spark_cleora.engine.propagate.compiled_products`: without numba scipy's path gives the same
numbers.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _row_runs(p0, p1, terms, indices, data, src, c0, c1, first, run, rest):
    """Entries ``p0..p1`` of a CSR row times rows of ``src`` (columns ``c0..c1``): the first run's float32
    sum into ``first``; True when there are more runs, their float64 sum (from zero, in order) in
    ``rest``."""
    width = c1 - c0
    end = min(p1, p0 + terms)
    for k in range(width):
        first[k] = 0.0
    for jj in range(p0, end):
        a = data[jj]
        row = src[indices[jj], c0:c1]  # (a contiguous view: the loop below is vectorised)
        for k in range(width):
            first[k] += a * row[k]
    if end == p1:
        return False
    for k in range(width):
        rest[k] = 0.0
    start = end
    while start < p1:
        end = min(p1, start + terms)
        for k in range(width):
            run[k] = 0.0
        for jj in range(start, end):
            a = data[jj]
            row = src[indices[jj], c0:c1]
            for k in range(width):
                run[k] += a * row[k]
        for k in range(width):
            rest[k] += np.float64(run[k])
        start = end
    return True


@numba.njit(nogil=True, cache=True)
def scaled_run_sums(lo, hi, terms, indptr, indices, data, src, c0, c1, scale, out, base):
    """Rows ``lo..hi`` of ``scale ⊙ (M src[:, c0:c1])`` into ``out`` (row r into ``out[r - base]``): M in CSR
    (``indptr``, ``indices``, float32 ``data``), each row in its stored order; each sum rounded once to
    ``out``'s type. The hyperedges' sums: M = A (or B), ``src`` the rows, ``scale`` the hyperedges'
    factors, ``out`` float32; the entities': M = Aᵀ (each entity's hyperedges in increasing order), ``src``
    those sums, ``scale`` = ``post``, ``out`` float64."""
    width = c1 - c0
    first = np.empty(width, np.float32)
    run = np.empty(width, np.float32)
    rest = np.empty(width, np.float64)
    for r in range(lo, hi):
        sc = scale[r]
        dst = out[r - base]
        if _row_runs(indptr[r], indptr[r + 1], terms, indices, data, src, c0, c1, first, run, rest):
            for k in range(width):
                dst[k] = (np.float64(first[k]) + rest[k]) * sc
        else:
            for k in range(width):
                dst[k] = np.float64(first[k]) * sc


@numba.njit(nogil=True, cache=True)
def two_sided_column_sums(lo, hi, terms, a_indptr, a_indices, a_data, s_b, b_indptr, b_indices, b_data, s_a, post,
                          out, base):
    """Rows ``lo..hi`` of ``post ⊙ (Aᵀ s_b + Bᵀ s_a)`` in float64, into ``out`` (row r into
    ``out[r - base]``): each product's float64 sums first, then their sum (scipy's path:
    ``y = Aᵀ s_b; y += Bᵀ s_a; y *= post``)."""
    width = s_a.shape[1]
    first = np.empty(width, np.float32)
    run = np.empty(width, np.float32)
    rest = np.empty(width, np.float64)
    y = np.empty(width, np.float64)
    for r in range(lo, hi):
        if _row_runs(a_indptr[r], a_indptr[r + 1], terms, a_indices, a_data, s_b, 0, width, first, run, rest):
            for k in range(width):
                y[k] = np.float64(first[k]) + rest[k]
        else:
            for k in range(width):
                y[k] = np.float64(first[k])
        p = post[r]
        dst = out[r - base]
        if _row_runs(b_indptr[r], b_indptr[r + 1], terms, b_indices, b_data, s_a, 0, width, first, run, rest):
            for k in range(width):
                dst[k] = (y[k] + (np.float64(first[k]) + rest[k])) * p
        else:
            for k in range(width):
                dst[k] = (y[k] + np.float64(first[k])) * p
