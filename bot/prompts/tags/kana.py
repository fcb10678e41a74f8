"""Japanese-aware matching: kana -> romaji (modified Hepburn) and a spelling-insensitive key (pure).

Danbooru tags are romanized (``hatsune_miku``, ``shirakami_fubuki``), and readings are spelled several
ways (shi/si, tsu/tu, chi/ti, fu/hu, ou/oo/o, ん as n or n'). So matching does not compare romaji
strings directly: both the typed text, after ``to_romaji``, and every tag go through ``phonetic``,
which drops everything but letters and digits and folds those spellings into one. ``はつねみく``,
``ハツネミク``, ``hatsunemiku`` and ``hatunemiku`` all become ``hatunemiku``, the key of
``hatsune_miku``.

Kanji are not converted: reading them needs a dictionary (pykakasi's is GPL-3.0 and several MB,
and a name's kanji have several readings), so a kanji query only matches tags whose aliases have it.
The kana table is data: ``data/tags/kana.toml``.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from functools import cache
from pathlib import Path

KANA_TABLE = Path(__file__).resolve().parents[3] / "data" / "tags" / "kana.toml"

# Hiragana U+3041..U+3096 and katakana U+30A1..U+30F6 are the same syllables 0x60 apart.
_KATAKANA_TO_HIRAGANA = {c: c - 0x60 for c in range(0x30A1, 0x30F7)}
_KANA = re.compile(r"[\u3041-\u3096\u309d\u309e\u30a1-\u30fa\u30fc-\u30fe\uff66-\uff9d]")  # + half-width
_SMALL_TSU = "っ"
_LONG_MARK = "ー"
_VOWELS = "aiueo"


@cache
def _table() -> dict[str, str]:
    with KANA_TABLE.open("rb") as f:
        table: dict[str, str] = tomllib.load(f)["kana"]
    return table


def has_kana(text: str) -> bool:
    """Whether ``text`` has hiragana or katakana (after NFKC: half-width katakana count)."""
    return _KANA.search(text) is not None


def to_romaji(text: str) -> str:
    """Hiragana and katakana in ``text`` -> modified Hepburn; everything else is kept as it is.

    ``はつねみく`` -> ``hatsunemiku``, ``ハツネ`` -> ``hatsune``, ``きょう`` -> ``kyou``,
    ``まっちゃ`` -> ``matcha``, ``ラーメン`` -> ``raamen``. Half-width katakana are folded by NFKC first.
    """
    table = _table()
    text = unicodedata.normalize("NFKC", text).translate(_KATAKANA_TO_HIRAGANA)
    out: list[str] = []
    double_next = False
    syllabic_n = False  # the last syllable was ん
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == _SMALL_TSU:
            double_next = True
            i += 1
            continue
        if ch == _LONG_MARK:
            last = next((c for c in reversed(out[-1]) if c in _VOWELS), "") if out else ""
            out.append(last)
            i += 1
            continue
        two = text[i : i + 2]
        if len(two) == 2 and two in table:
            roman, i = table[two], i + 2
        elif ch in table:
            roman, i = table[ch], i + 1
        else:
            roman, i = ch, i + 1
        if syllabic_n and out[-1] == "n" and roman[:1] in "aiueoy":
            out[-1] = "n'"  # ん before a vowel or y: kan'i, not kani
        syllabic_n = ch == "ん" and roman == "n"
        if double_next:
            if roman.startswith("ch"):
                roman = "t" + roman
            elif roman[:1].isascii() and roman[:1].isalpha() and roman[0] not in _VOWELS:
                roman = roman[0] + roman
            double_next = False
        out.append(roman)
    return "".join(out)


# Spelling folds (see ``phonetic``): consonants in one pass, longest spelling first, then vowels.
_CONSONANT_FOLDS = {
    "shi": "si", "sh": "sy",  # shi/si, sha/sya
    "chi": "ti", "ch": "ty",  # chi/ti, cha/tya, tchi/tti
    "tsu": "tu", "ts": "t",  # tsu/tu
    "ji": "zi", "j": "zy", "dz": "z",  # ji/zi, ja/zya
    "f": "h",  # fu/hu
    "m": "n",  # only before b/p: shimbun/shinbun
    "wo": "o",
}
_CONSONANTS = re.compile(r"shi|sh|chi|ch|tsu|ts|ji|j|dz|f|m(?=[bp])|wo")
_LONG_VOWEL = re.compile(r"([aiueo])\1+")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def _fold(match: re.Match[str]) -> str:
    return _CONSONANT_FOLDS[match.group()]


def phonetic(text: str) -> str:
    """A spelling-insensitive matching key for romanized Japanese: letters and digits only, with
    shi/si, chi/ti, tsu/tu, ji/zi, fu/hu, m/n before b/p, long vowels (ou, oo, uu, aa...) folded.

    ``hatsune_miku`` -> ``hatunemiku``; ``kousaka_honoka`` and ``kosaka honoka`` -> ``kosakahonoka``.
    Text without Latin letters or digits gives ``""``. Apply ``to_romaji`` first to kana.
    """
    if text.isascii():
        key = _NOT_ALNUM.sub("", text.lower())
    else:
        decomposed = unicodedata.normalize("NFKD", text.lower())
        key = _NOT_ALNUM.sub("", decomposed.encode("ascii", "ignore").decode("ascii"))
    key = _CONSONANTS.sub(_fold, key)
    return _LONG_VOWEL.sub(r"\1", key).replace("ou", "o")  # aa, ii, uu, ee, oo; then ou (kyou, kousaka)
