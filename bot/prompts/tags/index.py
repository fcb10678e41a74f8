"""The in-memory tag index: a fast prefix search and exact lookup over the loaded tag list (pure, synchronous).

``TagDatabase`` is immutable once opened, so one instance can be shared by threads and coroutines.
``search`` costs well under a millisecond and may run on the event loop; ``open`` takes 1-2 s and
~29 MB for the full 140k-tag list, so call it once, from a worker thread (``asyncio.to_thread``).

Index design (see ``_PrefixIndex``): every normalized name and alias is a key; keys are kept sorted
with a parallel array of tag *ranks* (0 = most posts). A prefix is a contiguous key range found by
two bisects; the best tags of a range are its smallest distinct ranks. Prefixes with more than
``SCAN_THRESHOLD`` keys (short ones like "", "a", "sa") get their answer precomputed at open, so no
query ever sorts more than ``SCAN_THRESHOLD`` ranks. There is one index over all tags and
one per category, so "artists starting with s" is as cheap as any other query.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from itertools import compress
from pathlib import Path

from bot.prompts.tags import db
from bot.prompts.tags.model import Tag, TagCategory, TagMatch, normalize

# Discord autocomplete shows at most 25 choices.
MAX_LIMIT = 25
# Key ranges longer than this get a precomputed top list; shorter ones are scanned per query.
SCAN_THRESHOLD = 128



def _prefix_end(keys: list[str], prefix: str, lo: int, hi: int) -> int:
    """First index in keys[lo:hi] whose key does not start with ``prefix`` (keys sorted, >= prefix)."""
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return hi
    return bisect_left(keys, stem[:-1] + chr(ord(stem[-1]) + 1), lo, hi)


def _smallest_distinct(values: Iterable[int], limit: int) -> list[int]:
    """The ``limit`` smallest distinct values (a tag can own several keys of one range)."""
    return sorted(set(values))[:limit]


class _PrefixIndex:
    """Sorted keys + parallel ranks, and ready-made results for every prefix whose key range is
    longer than ``SCAN_THRESHOLD`` (filled in by ``TagDatabase._build``)."""

    __slots__ = ("keys", "ranks", "top")

    def __init__(self, keys: list[str], ranks: array[int]) -> None:
        self.keys = keys
        self.ranks = ranks
        self.top: dict[str, tuple[TagMatch, ...]] = {}

    def big_prefixes(self) -> dict[str, list[int]]:
        """{prefix: its best MAX_LIMIT ranks} for each prefix with more than SCAN_THRESHOLD keys.

        Bottom-up: a prefix's best tags are among the keys equal to it and its children's best
        tags, so each key is sorted once (in the small range that holds it), not once per level.
        """
        keys, ranks = self.keys, self.ranks
        big: dict[str, list[int]] = {}

        def best(prefix: str, lo: int, hi: int) -> list[int]:
            if hi - lo <= SCAN_THRESHOLD:
                return _smallest_distinct(ranks[lo:hi], MAX_LIMIT)
            depth = len(prefix)
            i = lo
            while i < hi and len(keys[i]) == depth:  # keys equal to the prefix sort first
                i += 1
            candidates = list(ranks[lo:i])
            while i < hi:
                child = prefix + keys[i][depth]
                j = _prefix_end(keys, child, i, hi)
                candidates += best(child, i, j)
                i = j
            big[prefix] = top = _smallest_distinct(candidates, MAX_LIMIT)
            return top

        best("", 0, len(keys))
        return big

    def scan(self, prefix: str, limit: int) -> list[int]:
        """Best ``limit`` ranks for a prefix that is not in ``top`` (<= SCAN_THRESHOLD keys)."""
        keys = self.keys
        lo = bisect_left(keys, prefix)
        hi = _prefix_end(keys, prefix, lo, len(keys))
        return _smallest_distinct(self.ranks[lo:hi], limit) if lo < hi else []


class TagDatabase:
    """Read-only tag list with prefix search and exact lookup; build with ``TagDatabase.open``."""

    def __init__(
        self,
        tags: list[Tag],
        norm_names: list[str],
        all_index: _PrefixIndex,
        by_category: dict[TagCategory, _PrefixIndex],
        meta: dict[str, str],
    ) -> None:
        self._tags = tags  # by rank: 0 = most posts
        self._norm_names = norm_names  # by rank
        self._all = all_index
        self._by_category = by_category
        self.meta = meta
        self._memory: int | None = None
        # Precomputed answers for short prefixes, as shared immutable TagMatch objects.
        by_name: dict[int, TagMatch] = {}
        for index in (all_index, *by_category.values()):
            for prefix, ranks in index.big_prefixes().items():
                matches = []
                for rank in ranks:
                    if norm_names[rank].startswith(prefix):
                        match = by_name.get(rank)
                        if match is None:
                            match = by_name[rank] = TagMatch(tags[rank])
                    else:
                        match = self._match(rank, prefix)
                    matches.append(match)
                index.top[prefix] = tuple(matches)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def open(cls, db_path: Path) -> TagDatabase:
        """Load the tags written by ``import_csv`` and build the search index (1-2 s for 140k tags)."""
        tags, meta = db.load(Path(db_path))
        return cls._build(tags, meta)

    @classmethod
    def _build(cls, tags: list[Tag], meta: dict[str, str]) -> TagDatabase:
        # ``tags`` is in rank order. Entries are listed names first, then aliases, each in rank order,
        # so after a *stable* sort by key, equal keys are ordered (name before alias, more posts first):
        # the first entry of an equal run is the lookup winner.
        norm_names = [normalize(t.name) for t in tags]
        entry_keys = list(norm_names)
        entry_ranks = array("i", range(len(tags)))
        for rank, tag in enumerate(tags):
            for alias in tag.aliases:
                entry_keys.append(normalize(alias))
                entry_ranks.append(rank)
        order = sorted(range(len(entry_keys)), key=entry_keys.__getitem__)
        keys = [entry_keys[i] for i in order]
        ranks = array("i", [entry_ranks[i] for i in order])

        # Per-category indexes keep the global key order; the split runs in C via 0/1 byte masks.
        cat_of_rank = bytes(int(t.category) for t in tags)
        entry_cats = bytes(map(cat_of_rank.__getitem__, ranks))
        by_category = {}
        for c in TagCategory:
            mask = entry_cats.translate(bytes(int(i == c) for i in range(256)))
            by_category[c] = _PrefixIndex(list(compress(keys, mask)), array("i", compress(ranks, mask)))
        return cls(tags, norm_names, _PrefixIndex(keys, ranks), by_category, meta)

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tags)

    def search(self, text: str, category: TagCategory | None = None, limit: int = MAX_LIMIT) -> list[TagMatch]:
        """Tags whose name or an alias starts with ``text`` (normalized), most posts first.

        Each tag appears once; ``matched_alias`` is None when the name matched, otherwise the first
        alias that did. Empty text gives the most-used tags (of ``category``). At most
        ``min(limit, 25)`` results.
        """
        limit = min(limit, MAX_LIMIT)
        if limit <= 0:
            return []
        if category is None:
            index = self._all
        else:
            try:
                index = self._by_category[category]
            except KeyError:
                raise ValueError(f"unknown tag category {category!r}") from None
        prefix = normalize(text)
        top = index.top.get(prefix)
        if top is not None:
            return list(top[:limit])
        return [self._match(rank, prefix) for rank in index.scan(prefix, limit)]

    def _match(self, rank: int, prefix: str) -> TagMatch:
        tag = self._tags[rank]
        if self._norm_names[rank].startswith(prefix):
            return TagMatch(tag)
        for alias in tag.aliases:
            if normalize(alias).startswith(prefix):
                return TagMatch(tag, alias)
        return TagMatch(tag)  # unreachable: the rank came from one of these keys

    def lookup(self, names: Iterable[str]) -> dict[str, Tag]:
        """Exact (normalized) name-or-alias match: ``{input as given: canonical Tag}``.

        Unknown inputs are left out. A name beats an alias; between aliases, more posts wins.
        """
        if isinstance(names, str):
            raise TypeError("lookup() takes an iterable of tag strings, not a single string")
        keys, ranks, tags = self._all.keys, self._all.ranks, self._tags
        found: dict[str, Tag] = {}
        for name in names:
            key = normalize(name)
            if not key:
                continue
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                found[name] = tags[ranks[i]]
        return found

    def get(self, name: str) -> Tag | None:
        """``lookup`` for one string."""
        return self.lookup((name,)).get(name)

    def memory_bytes(self) -> int:
        """Estimated bytes held by the index and the Tag objects (deep ``sys.getsizeof``, shared
        objects counted once). Computed on first call (~1 s for 140k tags), then cached."""
        if self._memory is None:
            self._memory = _deep_size([self._tags, self._norm_names, self._all, *self._by_category.values()])
        return self._memory


def _deep_size(roots: list[object]) -> int:
    seen: set[int] = set()
    total = 0
    stack: list[object] = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or (isinstance(obj, int) and -5 <= obj <= 256):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (Tag, TagMatch)):
            stack.extend(getattr(obj, f) for f in obj.__slots__)
        elif isinstance(obj, _PrefixIndex):
            stack.extend((obj.keys, obj.ranks, obj.top))
    return total

