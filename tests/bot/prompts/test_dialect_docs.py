"""docs/dialects.md's mapping table is what the builder really does."""

from __future__ import annotations

import re
from pathlib import Path

from bot.prompts.builder import PromptChoices, build_prompt
from bot.prompts.dialects import load_dialect

DOC = Path(__file__).resolve().parents[3] / "docs" / "dialects.md"
MODELS = ["animagine-xl-3.1", "animagine-xl-4.0", "anima"]


def test_every_row_of_the_mapping_table_holds() -> None:
    rows = re.findall(r"^\| (quality|rating|year) \| `([^`]+)` \| `([^`]+)` \| `([^`]+)` \| `([^`]+)` \|$",
                      DOC.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 20
    for kind, value, *texts in rows:
        for model, text in zip(MODELS, texts, strict=True):
            built = build_prompt(load_dialect(model), PromptChoices("1girl", **{kind: value}))
            assert set(text.split(", ")) <= set(built.prompt.split(", ")), (kind, value, model, built.prompt)


NAMES = {"Animagine XL 3.1": "animagine-xl-3.1", "Animagine XL 4.0": "animagine-xl-4.0", "Anima": "anima"}
SECTION_WORDS = {"sentences": "text"}


def test_the_order_and_defaults_tables_hold() -> None:
    text = DOC.read_text(encoding="utf-8")
    orders = dict(re.findall(r"^\| (Animagine XL 3\.1|Animagine XL 4\.0|Anima) \| ([a-z, ]+?)(?: \(at the END\))? \|$",
                             text, re.M))
    defaults = re.findall(r"^\| (Animagine XL 3\.1|Animagine XL 4\.0|Anima) \| (\d+) \| ([\d.]+) \| [^|]+ \| "
                          r"(\d+)x(\d+) \(([\d:]+)\) \|", text, re.M)
    assert set(orders) == set(NAMES) and {row[0] for row in defaults} == set(NAMES)
    for name, order in orders.items():
        dialect = load_dialect(NAMES[name])
        assert tuple(SECTION_WORDS.get(s, s) for s in order.split(", ")) == dialect.order, name
    for name, steps, cfg, width, height, aspect in defaults:
        dialect = load_dialect(NAMES[name])
        bucket = dialect.default_bucket
        assert (dialect.steps, dialect.cfg) == (int(steps), float(cfg)), name
        assert (bucket.width, bucket.height, bucket.aspect) == (int(width), int(height), aspect), name


def test_the_default_quality_table_is_the_dialect_data() -> None:
    pattern = r"^\| (Animagine XL 3\.1|Animagine XL 4\.0|Anima) \| `([^`]+)`"
    rows = dict(re.findall(pattern, DOC.read_text("utf-8"), re.M))
    assert set(rows) == set(NAMES)
    for name, terms in rows.items():
        dialect = load_dialect(NAMES[name])
        assert tuple(terms.split(", ")) == dialect.default_quality, name
        assert build_prompt(dialect, PromptChoices("1girl")).default_quality == dialect.default_quality
