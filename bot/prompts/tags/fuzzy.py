"""Typo-tolerant candidates: a bigram inverted index over a list of keys (numpy), verified by edit distance.

``GramIndex(keys)`` holds, for every bigram of ``"\\x01" + key`` (the marker makes the first letter
count), the sorted ids of the keys that contain it, in one flat array (CSR: sorted gram codes,
offsets, ids). A query counts, with one ``np.bincount``, how many of its bigrams each key shares,
keeps the keys sharing enough of them, and ``prefix_distance`` then checks each survivor with the
Damerau (OSA) edit distance between the query and the key's beginning, as long as the query, so a
typo in a name typed halfway (``hatsnue_m``) still finds ``hatsune_miku``.

Keys are ASCII (``kana.phonetic`` output), so a bigram is two bytes. Over the ~310k sound keys of
the full Danbooru list (five categories) it holds ~12 MB; a query costs about a millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from rapidfuzz import process
from rapidfuzz.distance import OSA

_MARK = "\x01"  # before each key: its first letter forms the bigram (MARK, letter)
_SEP = "\x00"  # after each key: no bigram spans two keys
_ID_BITS = 22  # key ids below 4M, below a bigram of two bytes in a uint64


def max_typos(length: int) -> int:
    """How many edits a query of ``length`` characters may hold: none below 4 (too many short words
    are one edit apart), one up to 7, then two."""
    return 0 if length < 4 else 1 if length < 8 else 2


def prefix_distance(query: str, key: str, limit: int) -> int:
    """The smallest OSA distance between ``query`` and a beginning of ``key`` of about its length
    (``len(query) ± limit``); ``limit + 1`` when it is more than ``limit``."""
    n = len(query)
    best = limit + 1
    for length in range(max(1, n - limit), n + limit + 1):
        d = OSA.distance(query, key[:length], score_cutoff=limit)
        if d < best:
            best = d
            if d == 0:
                break
        if length >= len(key):
            break
    return best


def prefix_distances(query: str, keys: Sequence[str], limit: int) -> NDArray[np.int32]:
    """``prefix_distance(query, key, limit)`` for each of ``keys``, in one rapidfuzz call."""
    n = len(query)
    lengths = range(max(1, n - limit), n + limit + 1)
    if not keys:
        return np.empty(0, dtype=np.int32)
    pieces = [key[:length] for key in keys for length in lengths]
    scores = process.cdist([query], pieces, scorer=OSA.distance, score_cutoff=limit, dtype=np.int32)
    result: NDArray[np.int32] = scores.reshape(len(keys), len(lengths)).min(axis=1)
    return result


def _gram_codes(text: str) -> NDArray[np.uint32]:
    codes = np.frombuffer(text.encode("ascii", "ignore"), dtype=np.uint8).astype(np.uint32)
    return (codes[:-1] << np.uint32(8)) | codes[1:]


class GramIndex:
    """Bigram -> ids of the keys containing it, over ASCII ``keys`` (``kana.phonetic`` output; other
    characters are ignored). Ids are positions in ``keys``."""

    __slots__ = ("grams", "ids", "offsets", "size")

    def __init__(self, keys: Sequence[str]) -> None:
        if len(keys) >= 1 << _ID_BITS:
            raise ValueError(f"too many keys for a GramIndex: {len(keys):,}")
        self.size = len(keys)
        text = "".join(_MARK + key + _SEP for key in keys).encode("ascii", "replace")
        codes = np.frombuffer(text, dtype=np.uint8)
        lengths = np.fromiter((len(key) + 2 for key in keys), dtype=np.int64, count=len(keys))
        owner = np.repeat(np.arange(len(keys), dtype=np.uint32), lengths)[:-1]
        valid = (codes[:-1] != 0) & (codes[1:] != 0)  # not across the separator
        pairs = codes[:-1][valid].astype(np.uint64)
        pairs <<= np.uint64(8)
        pairs |= codes[1:][valid]
        pairs <<= np.uint64(_ID_BITS)
        pairs |= owner[valid]
        del owner, valid
        pairs.sort()
        if len(pairs):
            pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]  # one per (gram, key)
        all_grams = (pairs >> np.uint64(_ID_BITS)).astype(np.uint32)
        self.ids: NDArray[np.int32] = (pairs & np.uint64((1 << _ID_BITS) - 1)).astype(np.int32)
        del pairs
        first = np.ones(len(all_grams), dtype=bool)  # where each bigram's run of ids starts
        first[1:] = all_grams[1:] != all_grams[:-1]
        starts = np.flatnonzero(first)
        self.grams: NDArray[np.uint32] = all_grams[starts]
        self.offsets: NDArray[np.int64] = np.append(starts, len(all_grams)).astype(np.int64)

    def nbytes(self) -> int:
        return int(self.grams.nbytes + self.ids.nbytes + self.offsets.nbytes)

    def candidates(self, query: str, typos: int, order: NDArray[np.int32], limit: int) -> NDArray[np.int64]:
        """Ids of at most ``limit`` keys that share enough bigrams with ``query`` to be within ``typos``
        edits of one of their beginnings: the ones sharing most first, then by ``order`` (smaller
        first: the tag's popularity rank)."""
        if not query or self.size == 0:
            return np.empty(0, dtype=np.int64)
        wanted = np.unique(_gram_codes(_MARK + query))
        if not len(self.grams):
            return np.empty(0, dtype=np.int64)
        where = np.minimum(np.searchsorted(self.grams, wanted), len(self.grams) - 1)
        where = where[self.grams[where] == wanted]  # the query's bigrams that some key has
        if not len(where):
            return np.empty(0, dtype=np.int64)
        lists = [self.ids[self.offsets[i] : self.offsets[i + 1]] for i in where.tolist()]
        counts = np.bincount(np.concatenate(lists), minlength=self.size)
        # One edit changes at most three of the query's distinct bigrams (a transposition).
        need = max(1, len(wanted) - 3 * typos)
        hits = np.flatnonzero(counts >= need)
        if len(hits) > limit:
            score = counts[hits].astype(np.int64) * (1 << 32) - order[hits]
            hits = hits[np.argpartition(-score, limit)[:limit]]
        score = counts[hits].astype(np.int64) * (1 << 32) - order[hits]
        result: NDArray[np.int64] = hits[np.argsort(-score, kind="stable")]
        return result
