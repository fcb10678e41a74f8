"""benchmarks/bench_decode.py builds the real-size VAEs from the published configs and measures a decode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_decode
from bench_decode import Case


def test_the_cases_skip_what_changes_nothing() -> None:
    cases = bench_decode.cases_for("sdxl-fp32", 1024, 1024, [1, 4])
    # One image is never sliced; SDXL's 1024 px tile does not tile a 1024 px image, minimal's 512 px one does.
    assert {(c.count, c.slicing, c.tile) for c in cases} == {
        (1, False, None),
        (1, False, 512),
        (4, False, None),
        (4, False, 512),
        (4, True, None),
        (4, True, 512),
    }
    anima = bench_decode.cases_for("anima-bf16", 1024, 1024, [4], ("slicing+tiling",))
    assert [(c.count, c.slicing, c.tile) for c in anima] == [(4, True, 256)]


@pytest.mark.skipif(not bench_decode.can_measure_rss(), reason="reads /proc/self (Linux)")
def test_a_decode_of_the_real_size_sdxl_vae_is_measured() -> None:
    result = bench_decode.run_case(Case("sdxl-bf16", 256, 256, 2, True, None))  # large enough to raise RSS
    # The published SDXL VAE: 83.65 M parameters (0.16 GiB in 2 bytes).
    assert 83_600_000 < result.parameters < 83_700_000
    assert result.weights == result.parameters * 2
    assert result.peak > 0
    assert result.python_peak < result.peak


def test_the_qwen_image_vae_is_the_real_size() -> None:
    vae = bench_decode.build_vae("anima", __import__("torch").bfloat16)
    assert 126_800_000 < sum(p.numel() for p in vae.parameters()) < 127_000_000
    assert vae.config.base_dim == 96 and vae.config.z_dim == 16


def test_the_card_table_has_a_row_per_card_and_a_mode_per_family() -> None:
    rows = bench_decode.card_rows()
    assert len(rows) == len(bench_decode.CARDS_GIB)
    assert rows[-1].startswith("| 24 GB | high |")
    assert all(row.count("|") == 8 for row in rows)
