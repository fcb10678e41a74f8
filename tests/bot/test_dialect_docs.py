"""docs/dialects.md's mapping table is what the builder really does."""

from __future__ import annotations

import re
from pathlib import Path

from bot.dialects import load_dialect
from bot.prompt_builder import PromptChoices, build_prompt

DOC = Path(__file__).resolve().parents[2] / "docs" / "dialects.md"
MODELS = ["animagine-xl-3.1", "animagine-xl-4.0", "anima"]


def test_every_row_of_the_mapping_table_holds() -> None:
    rows = re.findall(r"^\| (quality|rating|year) \| `([^`]+)` \| `([^`]+)` \| `([^`]+)` \| `([^`]+)` \|$",
                      DOC.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 20
    for kind, value, *texts in rows:
        for model, text in zip(MODELS, texts, strict=True):
            built = build_prompt(load_dialect(model), PromptChoices("1girl", **{kind: value}))
            assert set(text.split(", ")) <= set(built.prompt.split(", ")), (kind, value, model, built.prompt)
