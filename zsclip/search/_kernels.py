"""Numba kernels of the search evaluator: per-class norms from cached Gram rows, and per image row the rank of
the true class and the log-sum-exp of the scaled cosines, for a batch of candidates in one pass over the rows.

Template sets (``sets_terms``). Each template's cosines with the fitting images are cached as fixed-point
integers (``round(cos · 2^FRACTION_BITS)``, int32), so a set's cosine sum is an exact integer sum: it does not
depend on the order of the additions, and a candidate can be built from another candidate of the batch by
adding and subtracting a few template rows (ProAPO's children differ from their parents by one or two
templates) with the very same result as a sum from scratch. Per image row, per candidate, in row buffers that
stay in the L1 cache: the integer sum (from scratch, or a kept base row ± a few template rows), the scaled
cosines ``float32(sum) · factor[c]`` (``factor = scale · 2^-FRACTION_BITS / ‖class weight‖``), then one pass
for the peak and the count of classes strictly above the true class (the rank: top-1 is rank 0, top-5 is
rank < 5) and one pass for the sum of exponentials. Rows are split between threads; a batch's template rows
are read from memory once per image row, not once per candidate.

The per-class squared norms of a set's class weights are quadratic forms of cached Gram rows,
``‖Σ_t b_t[c]‖² = Σ_{t,t'} b_t[c]·b_t'[c]`` (``gram_pairs`` computes the dot products in double precision,
``set_factors`` sums them in a fixed order), so an evaluation does no product with the embedding dimension.

Class edits (``edit_terms``, stage 2): a committed row of scaled cosines with a few columns replaced.

The exponential is written out (Cody–Waite range reduction and the single-precision polynomial of Cephes'
``expf``, about 1 ulp; the power of two made from its exponent bits by a bit cast) so that LLVM vectorises
it: a call to the C library's ``expf`` is not vectorised and would cost more than everything else. Arguments
are clamped at −80 below the row's peak (e^−80 is far below single precision's resolution of a sum that is
≥ 1, and it keeps the result a normal number). The peak is an integer maximum of an order-preserving integer
image of the floats (a float maximum does not vectorise here). Reductions may be reassociated (fastmath): a
row's result is still a fixed function of the row, so a candidate's fitness does not depend on what was
evaluated before it or beside it in a batch.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

_FLAGS = {"reassoc", "contract", "nsz", "arcp", "nnan", "ninf"}

#: fixed-point fraction bits of the cached cosines: a resolution of 1.5e-8, finer than single precision's
#: spacing above 0.125, and int32 sums stay exact while the sum of the templates' largest |cosine| is < 32
FRACTION_BITS = 26
#: int32 sums are used while the sum of a candidate's templates' largest |fixed-point value| stays below this
NARROW_LIMIT = 2 ** 31 - 1


@intrinsic
def _as_float(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        value = args[0]
        if bits.bitwidth != 32:
            value = builder.trunc(value, context.get_value_type(types.int32))
        return builder.bitcast(value, context.get_value_type(types.float32))

    return types.float32(bits), codegen


@intrinsic
def _order_key(typingctx, value):
    """An int32 that orders like the float32 ``value`` (its bits, with the magnitude bits of negatives flipped)."""
    if value != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = context.get_value_type(types.int32)
        bits = builder.bitcast(args[0], i32)
        return builder.xor(bits, builder.and_(builder.ashr(bits, i32(31)), i32(0x7FFFFFFF)))

    return types.int32(value), codegen


@njit(fastmath=_FLAGS, cache=True, inline="always")
def _from_key(key):
    """The float32 whose order key is ``key`` (the key's map is its own inverse)."""
    return _as_float(key ^ ((key >> 31) & 0x7FFFFFFF))


@njit(fastmath=_FLAGS, cache=True, inline="always")
def _log_sum_exp(z, peak):
    """log Σ_j exp(z[j]) of a row whose largest value is ``peak``."""
    total = np.float32(0.0)
    for j in range(z.shape[0]):
        x = z[j] - peak
        x = x if x > np.float32(-80.0) else np.float32(-80.0)
        k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = ((((np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r + np.float32(8.3334519073e-3)) * r
              + np.float32(4.1665795894e-2)) * r + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1)
        e = p * r * r + r + np.float32(1.0)
        total += e * _as_float((np.int32(k) + np.int32(127)) << 23)
    return peak + math.log(total)


@njit(fastmath=_FLAGS, cache=True, inline="always")
def _row_stats(z, tv, need_lse):
    """(rank, log-sum-exp) of one row of scaled cosines ``z`` (float32) whose true class has the value ``tv``;
    without ``need_lse`` the log-sum-exp is not computed (0)."""
    if not need_lse:
        count = np.int32(0)
        for j in range(z.shape[0]):
            count += np.int32(z[j] > tv)
        return count, np.float32(0.0)
    top = np.int32(-2147483648)
    count = np.int32(0)
    for j in range(z.shape[0]):
        key = _order_key(z[j])
        top = key if key > top else top
        count += np.int32(z[j] > tv)
    return count, _log_sum_exp(z, _from_key(top))


@njit(fastmath=_FLAGS, cache=True, inline="always")
def _scaled_stats(acc, f, label, z, need_lse):
    """(true value, rank, log-sum-exp) of the row ``float32(acc) · f``, written into ``z`` on the way; without
    ``need_lse`` (a fitness without CE: hill-climbing's top-1) one pass counts the rank and nothing is written."""
    tv = np.float32(acc[label]) * f[label]
    if not need_lse:
        count = np.int32(0)
        for j in range(z.shape[0]):
            count += np.int32(np.float32(acc[j]) * f[j] > tv)
        return tv, count, np.float32(0.0)
    top = np.int32(-2147483648)
    count = np.int32(0)
    for j in range(z.shape[0]):
        v = np.float32(acc[j]) * f[j]
        z[j] = v
        key = _order_key(v)
        top = key if key > top else top
        count += np.int32(v > tv)
    return tv, count, _log_sum_exp(z, _from_key(top))


@njit(fastmath=_FLAGS, cache=True, inline="always")
def _set_row(i, k, chunks, chunk_of, slot_of, sign, starts, base, keep_slot, wide, factors, label, acc, wacc, keep,
             z, need_lse):
    """(true value, rank, log-sum-exp) of candidate ``k`` on image row ``i``."""
    c = z.shape[0]
    lo, hi = starts[k], starts[k + 1]
    if wide[k]:
        src = chunks[chunk_of[lo]][slot_of[lo], i]
        for j in range(c):
            wacc[j] = src[j]
        for o in range(lo + 1, hi):
            src = chunks[chunk_of[o]][slot_of[o], i]
            for j in range(c):
                wacc[j] += src[j]
        return _scaled_stats(wacc, factors[k], label, z, need_lse)
    if base[k] >= 0:
        row = keep[keep_slot[base[k]]]
        for j in range(c):
            acc[j] = row[j]
    else:
        src = chunks[chunk_of[lo]][slot_of[lo], i]
        for j in range(c):
            acc[j] = src[j]
        lo += 1
    for o in range(lo, hi):
        src = chunks[chunk_of[o]][slot_of[o], i]
        if sign[o] > 0:
            for j in range(c):
                acc[j] = np.int32(acc[j] + src[j])
        else:
            for j in range(c):
                acc[j] = np.int32(acc[j] - src[j])
    if keep_slot[k] >= 0:
        row = keep[keep_slot[k]]
        for j in range(c):
            row[j] = acc[j]
    return _scaled_stats(acc, factors[k], label, z, need_lse)


@njit(parallel=True, fastmath=_FLAGS, cache=True)
def _sets_kernel(chunks, chunk_of, slot_of, sign, starts, base, keep_slot, n_keep, wide, factors, labels, rank, lse,
                 true, need_lse, parts):
    n = labels.shape[0]
    m, c = factors.shape
    for part in prange(parts):
        acc = np.empty(c, np.int32)
        wacc = np.empty(c, np.int64)
        keep = np.empty((max(n_keep, 1), c), np.int32)
        z = np.empty(c, np.float32)
        for i in range(part * n // parts, (part + 1) * n // parts):
            for k in range(m):
                true[k, i], rank[k, i], lse[k, i] = _set_row(i, k, chunks, chunk_of, slot_of, sign, starts, base,
                                                             keep_slot, wide, factors, labels[i], acc, wacc, keep, z,
                                                             need_lse)


@njit(parallel=True, fastmath=_FLAGS, cache=True)
def _edit_kernel(base, group, columns, labels, rank, lse, true, need_lse, parts):
    n, c = base.shape
    for part in prange(parts):
        z = np.empty(c, np.float32)
        for i in range(part * n // parts, (part + 1) * n // parts):
            for j in range(c):
                z[j] = base[i, j]
            for g in range(group.shape[0]):
                z[group[g]] = columns[i, g]
            tv = z[labels[i]]
            true[i] = tv
            rank[i], lse[i] = _row_stats(z, tv, need_lse)


@njit(parallel=True, fastmath=_FLAGS, cache=True)
def gram_pairs(blocks, a_chunk, a_slot, b_chunk, b_slot, out):
    """``out[p, c] = b_a[c]·b_b[c]`` for the template pairs ``p`` (chunked blocks, C × D each), in double.

    Every Gram value, cached or computed on demand, comes from this one function, so both give the same bits.
    """
    m, c = out.shape
    for cls in prange(c):
        for p in range(m):
            x = blocks[a_chunk[p]][a_slot[p], cls]
            y = blocks[b_chunk[p]][b_slot[p], cls]
            s = 0.0
            for d in range(x.shape[0]):
                s += np.float64(x[d]) * np.float64(y[d])
            out[p, cls] = s


@njit(fastmath=_FLAGS, cache=True)
def set_factors(gram, pair_rows, pair_weight, starts, scale, out):
    """``out[k, c] = scale / sqrt(Σ_p pair_weight[p] · gram[pair_rows[p], c])`` over candidate ``k``'s pairs
    ``starts[k]:starts[k+1]`` (summed in that order, in double)."""
    m, c = out.shape
    acc = np.empty(c, np.float64)
    for k in range(m):
        acc[:] = 0.0
        for p in range(starts[k], starts[k + 1]):
            row = gram[pair_rows[p]]
            w = pair_weight[p]
            for j in range(c):
                acc[j] += w * np.float64(row[j])
        for j in range(c):
            out[k, j] = np.float32(scale / math.sqrt(acc[j]))


#: below this many cosines per call rows run in one thread: waking a thread team costs more than the work, and
#: on a loaded machine a team waits on descheduled threads (one ImageNet-scale candidate, 10^6 cosines, runs in
#: one thread; a batch of several is split)
PARALLEL_MIN = 1 << 22


def _parts(cells: int) -> int:
    from numba import get_num_threads

    return get_num_threads() if cells >= PARALLEL_MIN else 1


def sets_terms(chunks, chunk_of, slot_of, sign, starts, base, keep_slot, n_keep, wide, factors, labels, rank, lse,
               true, need_lse: bool = True) -> None:
    """Rows of a batch of candidates (see the module docstring); ``rank``, ``lse``, ``true`` are K × N.

    Candidate ``k`` is the sum of the template rows ``starts[k]:starts[k+1]`` of ``chunk_of``/``slot_of`` with
    signs ``sign``, from scratch when ``base[k] < 0`` (all signs +1) or else added to the integer row of the
    earlier candidate ``base[k]``, which keeps it in ``keep[keep_slot[base[k]]]``; ``wide[k]`` sums in int64
    (from scratch). ``factors`` (K × C) turns the integer sums into scaled cosines. Without ``need_lse`` the
    log-sum-exps are left 0 (a fitness that does not weigh CE).
    """
    _sets_kernel(chunks, chunk_of, slot_of, sign, starts, base, keep_slot, n_keep, wide, factors, labels, rank, lse,
                 true, bool(need_lse), _parts(labels.shape[0] * factors.shape[1] * factors.shape[0]))


def edit_terms(base, group, columns, labels, rank, lse, true, need_lse: bool = True) -> None:
    """Rows of the committed scaled cosines ``base`` (N × C) with columns ``group`` replaced by ``columns``."""
    _edit_kernel(base, group, columns, labels, rank, lse, true, bool(need_lse), _parts(base.size))
