"""The tag index: prefix, sounds-alike and typo-tolerant search, and exact lookup over the tag list (pure, synchronous).

``TagDatabase`` (a tag database file) hands out a ``TagIndex`` (the list in memory), built at ``open``
or, with ``open(lazy=True)``, on the first search; until then ``lookup`` reads the file's ``tag_keys``
table, so building one prompt never loads the list. Both can be shared by threads and coroutines.
``search`` costs about a millisecond and may run on the event loop; building the index takes 1-2 s
and ~25 MB for the full 140k-tag list, and its sounds-alike indexes (``prepare``) 2-3 s and ~30 MB
more, so a server does both once, from a worker thread (``asyncio.to_thread``).

Prefix index (see ``_PrefixIndex``): every normalized name and alias is a key; keys are kept sorted
with a parallel array of tag *ranks* (0 = most posts). A prefix is a contiguous key range found by
two bisects; the best tags of a range are its smallest distinct ranks. Prefixes with more than
``SCAN_THRESHOLD`` keys (short ones like "", "a", "sa") get their answer precomputed at open, so no
query ever sorts more than ``SCAN_THRESHOLD`` ranks. There is one index over all tags and
one per category, so "artists starting with s" is as cheap as any other query.

When the prefix matches are fewer than asked, ``search`` fills up with similar tags from a
``_SoundIndex`` per category: every key, and its tail from each later word on, in ``kana.phonetic``
form (kana typed are read as romaji first). First the tags with such a key starting with what was
typed (``miku`` -> ``hatsune_miku``, ``はつねみく`` -> ``hatsune_miku``), most posts first; then those
within one or two edits of it (``fuzzy``: bigram candidates, OSA distance), fewest edits first.
"""

from __future__ import annotations

import sys
import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from itertools import compress
from pathlib import Path

import numpy as np

from bot.prompts.tags import db
from bot.prompts.tags.fuzzy import GramIndex, max_typos, prefix_distances
from bot.prompts.tags.kana import has_kana, phonetic, to_romaji
from bot.prompts.tags.model import Tag, TagCategory, TagMatch, normalize

# Discord autocomplete shows at most 25 choices.
MAX_LIMIT = 25
# Key ranges longer than this get a precomputed top list; shorter ones are scanned per query.
SCAN_THRESHOLD = 128
# How many typo candidates (by shared bigrams) the edit distance checks, per category and query.
FUZZY_CANDIDATES = 100



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


class TagIndex:
    """The loaded tag list in memory: prefix, sounds-alike and typo-tolerant search, exact lookup.

    Built by ``TagDatabase`` (``TagIndex.build``); immutable apart from the sounds-alike indexes,
    built once per category on first use (or all at once by ``prepare``), under a lock."""

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
        self._sounds: dict[TagCategory | None, _SoundIndex] = {}
        self._sounds_lock = threading.Lock()
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
    def build(cls, tags: list[Tag], meta: dict[str, str]) -> TagIndex:
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

    def search(
        self, text: str, category: TagCategory | None = None, limit: int = MAX_LIMIT, *, similar: bool = True
    ) -> list[TagMatch]:
        """Tags whose name or an alias starts with ``text`` (normalized), most posts first; then, if
        that is fewer than ``limit`` (and ``similar``), tags that sound alike (a later word starts with it, kana typed,
        another romanization) and then tags within a typo or two of it (see ``_more``).

        Each tag appears once; ``matched_alias`` is None when the name matched (or the match was not
        a prefix), otherwise the first alias that did. Empty text gives the most-used tags (of
        ``category``). At most ``min(limit, 25)`` results.
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
            found = list(top[:limit])
        else:
            found = [self._match(rank, prefix) for rank in index.scan(prefix, limit)]
        if similar and len(found) < limit and prefix:
            found += self._more(prefix, category, limit - len(found), {m.tag.name for m in found})
        return found

    def _more(self, prefix: str, category: TagCategory | None, wanted: int, seen: set[str]) -> list[TagMatch]:
        """Up to ``wanted`` tags not in ``seen``, matched by sound: first those with a key (name, alias,
        or their part from a later word on) that starts with the text's ``kana.phonetic`` form, most
        posts first; then those with a key one or two edits from it (``fuzzy.max_typos``), fewest
        edits first, then most posts."""
        sound = phonetic(to_romaji(prefix)) if has_kana(prefix) else phonetic(prefix)
        if not sound:
            return []
        sounds = self.sounds(category)
        out: list[TagMatch] = []
        tags = self._tags

        def add(ranks: Iterable[int]) -> bool:
            for rank in ranks:
                tag = tags[rank]
                if tag.name not in seen:
                    seen.add(tag.name)
                    out.append(TagMatch(tag))
                    if len(out) >= wanted:
                        return True
            return False

        if add(sounds.prefix(sound, wanted + len(seen))):
            return out
        typos = max_typos(len(sound))
        if typos:
            add(rank for _, rank in sorted(sounds.fuzzy(sound, typos)))
        return out

    def sounds(self, category: TagCategory | None) -> _SoundIndex:
        """The sounds-alike and typo index of ``category`` (None: of all tags), built on first use
        (~0.3-1 s per category on the full list, 2-3 s for all tags; ``prepare`` builds the categories')."""
        found = self._sounds.get(category)
        if found is None:
            with self._sounds_lock:
                found = self._sounds.get(category)
                if found is None:
                    index = self._all if category is None else self._by_category[category]
                    found = self._sounds[category] = _SoundIndex(index)
        return found

    def prepare(self) -> None:
        """Build every category's sounds-alike index now, so no search of one category (autocomplete's)
        pays for it later. A search of all categories builds its own on first use."""
        for category in TagCategory:
            self.sounds(category)

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
            self.prepare()
            roots = [self._tags, self._norm_names, self._all, *self._by_category.values(), *self._sounds.values()]
            self._memory = _deep_size(roots)
        return self._memory




def _word_starts(key: str) -> Iterable[str]:
    """``key`` and its tail from each later word on (``hatsune_miku`` -> also ``miku``), but not from a
    parenthesized qualifier (``shirakami_fubuki_(1st_costume)``: not ``(1st_costume)``)."""
    yield key
    start = key.find("_")
    while start != -1:
        if start + 1 < len(key) and key[start + 1] != "(":
            yield key[start + 1 :]
        start = key.find("_", start + 1)


class _SoundIndex:
    """One category's keys in ``kana.phonetic`` form, from every word start: a prefix index (with
    precomputed answers for short prefixes, like ``_PrefixIndex.top``) and a bigram index for typos."""

    __slots__ = ("grams", "order", "top", "words")

    def __init__(self, index: _PrefixIndex) -> None:
        cache: dict[str, str] = {}
        keys: list[str] = []
        ranks = array("i")
        for key, rank in zip(index.keys, index.ranks, strict=True):
            for piece in _word_starts(key):
                sound = cache.get(piece)
                if sound is None:
                    sound = cache[piece] = phonetic(piece)
                if sound:
                    keys.append(sound)
                    ranks.append(rank)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.words = _PrefixIndex([keys[i] for i in order], array("i", [ranks[i] for i in order]))
        self.top = self.words.big_prefixes()
        self.grams = GramIndex(self.words.keys)
        self.order = np.frombuffer(self.words.ranks, dtype=np.int32)  # a key id's tag rank
        self.fuzzy("anna", 1)  # first calls into numpy and rapidfuzz (~20 ms once): not in a user's search

    def prefix(self, sound: str, limit: int) -> list[int]:
        """Ranks of the best ``limit`` tags with a key starting with ``sound``."""
        top = self.top.get(sound)
        return top[:limit] if top is not None else self.words.scan(sound, limit)

    def fuzzy(self, sound: str, typos: int) -> list[tuple[int, int]]:
        """(edits, rank) of the keys whose beginning is at most ``typos`` edits from ``sound``, among the
        ``FUZZY_CANDIDATES`` keys sharing most bigrams with it."""
        keys, ranks = self.words.keys, self.words.ranks
        ids = self.grams.candidates(sound, typos, self.order, FUZZY_CANDIDATES).tolist()
        distances = prefix_distances(sound, [keys[i] for i in ids], typos).tolist()
        return [(d, ranks[i]) for i, d in zip(ids, distances, strict=True) if d <= typos]

    def nbytes(self) -> int:
        return self.grams.nbytes()


class TagDatabase:
    """The tag list of a tag database file: search (autocomplete) and exact lookup (the prompt builder).

    ``TagDatabase.open(path)`` loads the list and builds the in-memory ``TagIndex`` (1-2 s for the full
    list). ``TagDatabase.open(path, lazy=True)`` only checks the file (milliseconds) and builds the
    index on the first ``search`` (or ``prepare``, which a server calls once, off its event loop);
    until then ``lookup`` asks the file's ``tag_keys`` table, so a command that only builds one
    prompt (``animebot generate``) never loads the list. Safe to share between threads.
    """

    def __init__(self, path: Path | None, meta: dict[str, str], index: TagIndex | None, keyed: bool) -> None:
        self.path = path
        self.meta = meta
        self._index = index
        self._keyed = keyed  # whether ``lookup`` may use the file's tag_keys table before the index is built
        self._lock = threading.Lock()

    @classmethod
    def open(cls, db_path: Path, *, lazy: bool = False) -> TagDatabase:
        """The tags written by ``import_csv``: loaded and indexed now, or (``lazy``) on first search."""
        db_path = Path(db_path)
        if lazy:
            meta, keyed = db.check(db_path)
            return cls(db_path, meta, None, keyed)
        tags, meta = db.load(db_path)
        return cls(db_path, meta, TagIndex.build(tags, meta), False)

    @classmethod
    def from_tags(cls, tags: list[Tag], meta: dict[str, str] | None = None) -> TagDatabase:
        """An index over ``tags`` (most posts first), with no file behind it."""
        return cls(None, dict(meta or {}), TagIndex.build(tags, dict(meta or {})), False)

    @property
    def loaded(self) -> bool:
        """Whether the in-memory index is built (searches then never touch the file)."""
        return self._index is not None

    def index(self) -> TagIndex:
        """The in-memory index, loaded from the file now if it was not yet (TagDatabaseError if the
        file went bad since ``open``)."""
        index = self._index
        if index is None:
            with self._lock:
                index = self._index
                if index is None:
                    assert self.path is not None
                    tags, meta = db.load(self.path)
                    index = self._index = TagIndex.build(tags, meta)
        return index

    def prepare(self) -> None:
        """Load the list and build every index now (seconds: call from a worker thread)."""
        self.index().prepare()

    def __len__(self) -> int:
        if self._index is None and self.meta.get("tag_count", "").isdigit():
            return int(self.meta["tag_count"])
        return len(self.index())

    def search(
        self, text: str, category: TagCategory | None = None, limit: int = MAX_LIMIT, *, similar: bool = True
    ) -> list[TagMatch]:
        """``TagIndex.search``: prefix matches first, then (``similar``) sounds-alike and typo-tolerant ones."""
        return self.index().search(text, category, limit, similar=similar)

    def lookup(self, names: Iterable[str]) -> dict[str, Tag]:
        """Exact (normalized) name-or-alias match: ``{input as given: canonical Tag}``.

        Unknown inputs are left out. A name beats an alias; between aliases, more posts wins.
        """
        if isinstance(names, str):
            raise TypeError("lookup() takes an iterable of tag strings, not a single string")
        if self._index is not None or not self._keyed:
            return self.index().lookup(names)
        assert self.path is not None
        wanted = [(name, normalize(name)) for name in names]
        found = db.lookup_keys(self.path, [key for _, key in wanted if key])
        return {name: found[key] for name, key in wanted if key in found}

    def get(self, name: str) -> Tag | None:
        """``lookup`` for one string."""
        return self.lookup((name,)).get(name)

    def memory_bytes(self) -> int:
        """``TagIndex.memory_bytes`` (loads and builds everything first)."""
        return self.index().memory_bytes()


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
        elif isinstance(obj, _SoundIndex):
            stack.extend((obj.words, obj.top))
            total += obj.nbytes()
    return total

