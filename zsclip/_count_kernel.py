"""Numba kernel of the caption counter: FTS5 ``unicode61`` tokens of UTF-8 captions matched against names, one pass.

``zsclip.corpus_count.PhraseMatcher`` hands this kernel a batch of captions as Arrow's raw buffers (the UTF-8
bytes and the row offsets) and its names as tables; the kernel reads every byte once and returns the distinct
(phrase, caption) pairs. Per caption:

- bytes are decoded as UTF-8 and each code point goes through ``unicode61.code_table``: a folded code point
  (lower case, diacritics removed), ``SKIP_CODE`` (characters deleted before tokenising: REAL's quotes, and
  the combining accents unicode61 folds to nothing) or ``SEPARATOR_CODE``. Invalid UTF-8 bytes are
  separators, like the U+FFFD a decoder puts in their place;
- a token (a maximal run of token characters) is hashed as it is read (FNV-1a over its folded code points);
  a 65,536-bit filter of the names' token hashes dismisses most tokens at once, the others are looked up in
  an open-addressing hash table of the names' tokens and compared code point by code point (a hash
  collision never makes a match); tokens outside the names' vocabulary get id -1;
- from every token that starts some name, a trie of the names' token-id sequences is walked over the
  following tokens of the same caption; each phrase found is reported once per caption.

Everything is serial: ``count_corpus`` runs shards in processes. Compiled on first use and cached on disk
(``cache=True``), so later processes load the machine code instead of compiling it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .unicode61 import SEPARATOR_CODE as SEPARATOR

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def token_hash(token: str) -> int:
    """FNV-1a (64 bits) over a folded token's code points: what the kernel computes as it reads a token."""
    h = int(_FNV_OFFSET)
    for ch in token:
        h = ((h ^ ord(ch)) * int(_FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return h


def token_filter(hashes: list[int]) -> np.ndarray:
    """The kernel's 65,536-bit token filter (8,192 bytes) with the bit of each hash set (its top 16 bits)."""
    bits = np.array([h >> 48 for h in hashes], dtype=np.int64)
    out = np.zeros(1 << 13, dtype=np.uint8)
    np.bitwise_or.at(out, bits >> 3, (1 << (bits & 7)).astype(np.uint8))
    return out


@njit(cache=True)
def _lookup(h, buf, length, max_token, slot_hash, slot_id, vocab_codes, vocab_ptr):
    """Vocabulary id of the token ``buf[:length]`` with hash ``h``, or -1 (tokens over ``max_token``: -1)."""
    if length > max_token:
        return -1
    mask = slot_id.shape[0] - 1
    slot = np.int64(h & np.uint64(mask))
    while True:
        vid = slot_id[slot]
        if vid < 0:
            return -1
        if slot_hash[slot] == h:
            a = vocab_ptr[vid]
            if vocab_ptr[vid + 1] - a == length:
                same = True
                for k in range(length):
                    if vocab_codes[a + k] != buf[k]:
                        same = False
                        break
                if same:
                    return vid
        slot = (slot + 1) & mask


@njit(cache=True)
def _child(node, tok, child_ptr, child_tok, child_node):
    """The trie node below ``node`` along token ``tok`` (children sorted by token), or -1."""
    lo = child_ptr[node]
    hi = child_ptr[node + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        t = child_tok[mid]
        if t < tok:
            lo = mid + 1
        elif t > tok:
            hi = mid
        else:
            return child_node[mid]
    return -1


@njit(cache=True)
def _decode(data, i, end):
    """(code point, bytes used) of the UTF-8 sequence at ``data[i]`` (> 0x7F); (-1, 1) when it is invalid."""
    b = np.int64(data[i])
    if b >= 0xC2 and b <= 0xDF:
        n, cp, low = 2, b & 0x1F, 0x80
    elif b >= 0xE0 and b <= 0xEF:
        n, cp, low = 3, b & 0x0F, 0x800
    elif b >= 0xF0 and b <= 0xF4:
        n, cp, low = 4, b & 0x07, 0x10000
    else:
        return -1, 1
    if i + n > end:
        return -1, 1
    for k in range(1, n):
        c = np.int64(data[i + k])
        if c & 0xC0 != 0x80:
            return -1, 1
        cp = (cp << 6) | (c & 0x3F)
    if cp < low or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF):
        return -1, 1
    return cp, n


@njit(cache=True, inline="always")
def _in_filter(token_filter, h):
    """Whether the filter bit of hash ``h`` is set (its top 16 bits pick one of 65,536 bits)."""
    bit = np.int64(h >> np.uint64(48))
    return ((token_filter[bit >> 3] >> (bit & 7)) & 1) != 0


@njit(cache=True)
def match_captions(data, offsets, valid, code_table, token_filter, slot_hash, slot_id, vocab_codes, vocab_ptr,
                   max_token, root, child_ptr, child_tok, child_node, node_phrase, n_phrases):
    """Distinct (phrase, row) pairs of the phrases occurring in the captions, in row order.

    ``data``: UTF-8 bytes; caption ``r`` is ``data[offsets[r]:offsets[r + 1]]`` (``valid[r]`` false: no
    text). ``code_table``: per code point, its folded code point, ``SKIP_CODE`` or ``SEPARATOR_CODE``. The vocabulary
    (``vocab_codes[vocab_ptr[v]:vocab_ptr[v + 1]]``, the longest ``max_token`` code points) is indexed by
    ``slot_hash``/``slot_id`` (a power-of-two table, -1 for empty slots); ``token_filter`` (8,192 bytes)
    has the bit of each vocabulary hash set, so most other tokens are dismissed without a probe. The trie:
    ``root[token]`` is the node of a one-token prefix (-1: none), ``child_*`` the children of each node in
    CSR form sorted by token, ``node_phrase[node]`` the phrase ending there (-1: none).
    """
    n = offsets.shape[0] - 1
    longest = 1
    for r in range(n):
        longest = max(longest, offsets[r + 1] - offsets[r] + 1)
    row_tokens = np.empty(longest, np.int32)  # a caption of b bytes has at most b tokens
    buf = np.empty(max(max_token, 1), np.int64)
    seen = np.full(n_phrases, -1, np.int64)
    cap = 1024
    out_phrase = np.empty(cap, np.int64)
    out_row = np.empty(cap, np.int64)
    found = 0
    for r in range(n):
        if not valid[r]:
            continue
        i = offsets[r]
        end = offsets[r + 1]
        ntok = 0
        starts_name = False
        length = 0
        h = _FNV_OFFSET
        while i < end:
            b = data[i]
            if b < 0x80:
                code = code_table[b]
                i += 1
            else:
                cp, used = _decode(data, i, end)
                i += used
                code = code_table[cp] if cp >= 0 else SEPARATOR
            if code >= 0:
                if length < max_token:
                    buf[length] = code
                length += 1
                h = (h ^ np.uint64(code)) * _FNV_PRIME
            elif code == SEPARATOR and length:
                tok = -1
                if _in_filter(token_filter, h):
                    tok = _lookup(h, buf, length, max_token, slot_hash, slot_id, vocab_codes, vocab_ptr)
                    starts_name |= tok >= 0 and root[tok] >= 0
                row_tokens[ntok] = tok
                ntok += 1
                length = 0
                h = _FNV_OFFSET
        if length:  # the caption's end closes its last token
            tok = -1
            if _in_filter(token_filter, h):
                tok = _lookup(h, buf, length, max_token, slot_hash, slot_id, vocab_codes, vocab_ptr)
                starts_name |= tok >= 0 and root[tok] >= 0
            row_tokens[ntok] = tok
            ntok += 1
        if not starts_name:
            continue
        for s in range(ntok):
            t = row_tokens[s]
            if t < 0:
                continue
            node = root[t]
            j = s
            while node >= 0:
                p = node_phrase[node]
                if p >= 0 and seen[p] != r:
                    seen[p] = r
                    if found == cap:
                        cap *= 2
                        grown_p = np.empty(cap, np.int64)
                        grown_r = np.empty(cap, np.int64)
                        grown_p[:found] = out_phrase[:found]
                        grown_r[:found] = out_row[:found]
                        out_phrase, out_row = grown_p, grown_r
                    out_phrase[found] = p
                    out_row[found] = r
                    found += 1
                j += 1
                if j >= ntok or row_tokens[j] < 0:
                    break
                node = _child(node, row_tokens[j], child_ptr, child_tok, child_node)
    return out_phrase[:found], out_row[:found]
