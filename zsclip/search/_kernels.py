"""Numba kernels of the search evaluator: top-1/top-5 ranks and log-sum-exp of scaled cosines in one fused pass.

Per fitting image (a row), in a row buffer that stays in the L1 cache: the scaled cosines are built (a sum of
cached per-template cosine rows times a per-class factor, or a committed row with a few columns replaced),
then one pass gives the peak and the count of classes strictly above the true class (the rank: top-1 is
rank 0, top-5 is rank < 5), and one pass the sum of exponentials. Rows run in parallel.

The exponential is written out (Cody–Waite range reduction and the single-precision polynomial of Cephes'
``expf``, about 1 ulp; the power of two built from its exponent bits) so that LLVM vectorises it: a call to
the C library's ``expf`` is not vectorised and would cost more than everything else. Arguments are clamped
at −80 below the row's peak (e^−80 is far below single precision's resolution of a sum that is ≥ 1, and it
keeps the result a normal number). Reductions may be reassociated (fastmath ``reassoc``): a row's result is
still a fixed function of the row, so a set's fitness does not depend on what was evaluated before it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_FLAGS = {"reassoc", "contract", "nsz", "arcp"}


@njit(fastmath=_FLAGS, cache=True, inline="always")
def _row_stats(buf, ibuf, true_value):
    """(rank, log-sum-exp) of one row of scaled cosines ``buf`` (float32, overwritten)."""
    c = buf.shape[0]
    peak = np.float32(-np.inf)
    count = 0
    for j in range(c):
        peak = max(peak, buf[j])
        count += buf[j] > true_value
    for j in range(c):
        x = max(buf[j] - peak, np.float32(-80.0))
        k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = ((((np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r + np.float32(8.3334519073e-3)) * r
              + np.float32(4.1665795894e-2)) * r + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1)
        buf[j] = p * r * r + r + np.float32(1.0)
        ibuf[j] = (np.int32(k) + np.int32(127)) << 23
    powers = ibuf.view(np.float32)
    total = np.float32(0.0)
    for j in range(c):
        total += buf[j] * powers[j]
    return count, peak + math.log(total)


@njit(fastmath=_FLAGS, cache=True, inline="always")
def _set_row(i, chunks, chunk_of, slot_of, factor, labels, rank, lse, true):
    c = factor.shape[0]
    buf = np.empty(c, np.float32)
    ibuf = np.empty(c, np.int32)
    src = chunks[chunk_of[0]][slot_of[0], i]
    for j in range(c):
        buf[j] = src[j]
    for t in range(1, chunk_of.shape[0]):
        src = chunks[chunk_of[t]][slot_of[t], i]
        for j in range(c):
            buf[j] += src[j]
    for j in range(c):
        buf[j] *= factor[j]
    tv = buf[labels[i]]
    true[i] = tv
    rank[i], lse[i] = _row_stats(buf, ibuf, tv)


@njit(fastmath=_FLAGS, cache=True, inline="always")
def _edit_row(i, base, group, columns, labels, rank, lse, true):
    c = base.shape[1]
    buf = np.empty(c, np.float32)
    ibuf = np.empty(c, np.int32)
    for j in range(c):
        buf[j] = base[i, j]
    for g in range(group.shape[0]):
        buf[group[g]] = columns[i, g]
    tv = buf[labels[i]]
    true[i] = tv
    rank[i], lse[i] = _row_stats(buf, ibuf, tv)


@njit(parallel=True, fastmath=_FLAGS, cache=True)
def _set_terms_parallel(chunks, chunk_of, slot_of, factor, labels, rank, lse, true):
    for i in prange(labels.shape[0]):
        _set_row(i, chunks, chunk_of, slot_of, factor, labels, rank, lse, true)


@njit(fastmath=_FLAGS, cache=True)
def _set_terms_serial(chunks, chunk_of, slot_of, factor, labels, rank, lse, true):
    for i in range(labels.shape[0]):
        _set_row(i, chunks, chunk_of, slot_of, factor, labels, rank, lse, true)


@njit(parallel=True, fastmath=_FLAGS, cache=True)
def _edit_terms_parallel(base, group, columns, labels, rank, lse, true):
    for i in prange(labels.shape[0]):
        _edit_row(i, base, group, columns, labels, rank, lse, true)


@njit(fastmath=_FLAGS, cache=True)
def _edit_terms_serial(base, group, columns, labels, rank, lse, true):
    for i in range(labels.shape[0]):
        _edit_row(i, base, group, columns, labels, rank, lse, true)


#: below this many cosines per evaluation rows run in one thread: waking a thread team costs more than the
#: work (and on a loaded machine a team waits on descheduled threads)
PARALLEL_MIN = 1 << 18


def set_terms(chunks, chunk_of, slot_of, factor, labels, rank, lse, true) -> None:
    """Rows of a template set: ``scaled[i, c] = factor[c] · Σ_t chunks[chunk_of[t]][slot_of[t], i, c]``.

    Writes each row's rank of the true class, log-sum-exp and true scaled cosine into ``rank``, ``lse``,
    ``true``. The sum runs in the order of ``chunk_of``/``slot_of`` (the caller sorts it).
    """
    parallel = labels.shape[0] * factor.shape[0] >= PARALLEL_MIN
    (_set_terms_parallel if parallel else _set_terms_serial)(chunks, chunk_of, slot_of, factor, labels, rank, lse,
                                                             true)


def edit_terms(base, group, columns, labels, rank, lse, true) -> None:
    """Rows of the committed scaled cosines ``base`` (N × C) with columns ``group`` replaced by ``columns``."""
    parallel = base.size >= PARALLEL_MIN
    (_edit_terms_parallel if parallel else _edit_terms_serial)(base, group, columns, labels, rank, lse, true)
