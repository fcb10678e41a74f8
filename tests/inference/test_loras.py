"""The LoRA library (inference/loras.py): a real folder of .safetensors files with sidecars, scanned."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from inference.loras import (
    HashCache,
    LoraLibrary,
    LoraLookup,
    combine_loras,
    file_hashes,
    guess_family,
    lora_key,
    read_sidecar,
    safetensors_header,
)
from inference.tiny.lora import tiny_anima_lora, tiny_sdxl_lora, write_lora
from inference.types import LoraFile, LoraWeight

States = dict[str, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def states() -> States:
    return {
        "sdxl_kohya": tiny_sdxl_lora("kohya"),
        "sdxl_diffusers": tiny_sdxl_lora("diffusers", seed=2),
        "anima_comfy": tiny_anima_lora("comfyui"),
        "anima_diffusers": tiny_anima_lora("diffusers", seed=2),
        "anima_kohya": tiny_anima_lora("kohya"),
    }


def write(path: Path, state: dict[str, torch.Tensor]) -> Path:
    return write_lora(path, state)


def test_autov3_is_the_sha256_of_the_bytes_after_the_header(tmp_path: Path, states: States) -> None:
    path = write(tmp_path / "a.safetensors", states["sdxl_kohya"])
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    whole, short = file_hashes(path)
    assert whole == hashlib.sha256(data).hexdigest()
    assert short == hashlib.sha256(data[8 + header :]).hexdigest()[:12]


def test_families_are_guessed_from_the_keys(tmp_path: Path, states: States) -> None:
    expected = {
        "sdxl_kohya": "sdxl",
        "sdxl_diffusers": "sdxl",
        "anima_comfy": "anima",
        "anima_diffusers": "anima",
        "anima_kohya": "anima",
    }
    for name, family in expected.items():
        header = safetensors_header(write(tmp_path / f"{name}.safetensors", states[name]))
        assert guess_family(header)[0] == family, name
    sd15 = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": {"dtype": "F16", "shape": [4, 768]}}
    assert guess_family(sd15) == (None, "it looks like a LoRA for SD 1.x (one text encoder)")
    sd15_unet = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": {
        "dtype": "F16", "shape": [4, 768]
    }}  # fmt: skip
    assert guess_family(sd15_unet)[0] is None
    assert guess_family({"some.weight": {"dtype": "F32", "shape": [1]}})[0] is None


def test_a_folder_is_scanned_with_its_sidecars(tmp_path: Path, states: States) -> None:
    root = tmp_path / "loras"
    write(root / "pixel_art.safetensors", states["sdxl_kohya"])
    (root / "pixel_art.toml").write_text(
        'name = "Pixel Art"\nweight = 0.7\ntriggers = ["pixel art", "8-bit"]\ntrigger_position = "end"\n',
        encoding="utf-8",
    )
    write(root / "styles" / "ink.safetensors", states["anima_comfy"])
    write(root / "mystery.safetensors", {"something.weight": states["sdxl_kohya"][next(iter(states["sdxl_kohya"]))]})
    write(root / "told.safetensors", {"something.weight": states["sdxl_kohya"][next(iter(states["sdxl_kohya"]))]})
    (root / "told.toml").write_text('family = "sdxl"\nnsfw = true\n', encoding="utf-8")
    write(root / "bad_sidecar.safetensors", states["sdxl_diffusers"])
    (root / "bad_sidecar.toml").write_text('weight = "heavy"\n', encoding="utf-8")
    write(root / "a:b.safetensors", states["sdxl_diffusers"])
    write(root / "kohya_anima.safetensors", states["anima_kohya"])
    (root / "not_a_lora.safetensors").write_bytes(b"garbage")
    write(root / ".hidden" / "secret.safetensors", states["sdxl_kohya"])
    write(root / "sub" / "PIXEL  ART.safetensors", states["sdxl_diffusers"])  # same name as the first, folded

    library = LoraLibrary.scan(root, HashCache(tmp_path / "hashes.json"))
    assert [e.name for e in library.entries] == ["ink", "Pixel Art", "told"]
    pixel = library.get("pixel art")
    assert pixel is not None and library.get("ｐｉｘｅｌ\u200b ART") is pixel
    assert (pixel.family, pixel.weight, pixel.triggers, pixel.trigger_position, pixel.nsfw) == (
        "sdxl",
        0.7,
        ("pixel art", "8-bit"),
        "end",
        False,
    )
    assert pixel.sha256 == file_hashes(root / "pixel_art.safetensors")[0]
    assert library.get("told") is not None and library.get("told").nsfw  # type: ignore[union-attr]
    assert [e.name for e in library.for_family("anima")] == ["ink"]
    assert library.path_for(pixel.sha256) == root / "pixel_art.safetensors"
    assert library.path_for("0" * 64) is None
    assert pixel.at(None) == LoraWeight("Pixel Art", pixel.sha256, 0.7, pixel.short_hash)
    assert pixel.at(1.2).weight == 1.2
    problems = "\n".join(library.problems)
    for text in (
        "mystery.safetensors: left out: its family cannot be told",
        "bad_sidecar.safetensors: sidecar bad_sidecar.toml: weight must be a number",
        "a:b.safetensors: the name 'a:b'",
        "kohya_anima.safetensors: left out: kohya's Anima layout",
        "not_a_lora.safetensors: too short for a safetensors file",
        "PIXEL  ART.safetensors: the name 'PIXEL ART' is already used by pixel_art.safetensors",
    ):
        assert text in problems
    assert len(library.problems) == 6
    assert "secret" not in problems


def test_a_restart_does_not_hash_again_but_a_changed_file_is(tmp_path: Path, states: States) -> None:
    root = tmp_path / "loras"
    first = write(root / "one.safetensors", states["sdxl_kohya"])
    write(root / "two.safetensors", states["anima_comfy"])
    cache_file = tmp_path / "hashes.json"
    cache = HashCache(cache_file)
    LoraLibrary.scan(root, cache)
    assert cache.hashed == 2 and cache_file.is_file()

    again = HashCache(cache_file)  # a restart
    library = LoraLibrary.scan(root, again)
    assert again.hashed == 0 and len(library.entries) == 2

    write(first, states["sdxl_diffusers"])
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = HashCache(cache_file)
    library = LoraLibrary.scan(root, changed)
    assert changed.hashed == 1
    assert library.get("one").sha256 == file_hashes(first)[0]  # type: ignore[union-attr]

    (root / "two.safetensors").unlink()
    LoraLibrary.scan(root, HashCache(cache_file))
    assert len(cache_file.read_text(encoding="utf-8").split('"sha256"')) == 2  # the gone file left the cache


def test_a_missing_folder_is_an_empty_library(tmp_path: Path) -> None:
    library = LoraLibrary.scan(tmp_path / "nowhere")
    assert library.entries == () and library.problems == () and library.get("x") is None


def test_sidecar_checks(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    for text, message in (
        ('colour = "red"\n', "unknown key 'colour'"),
        ('family = "sd15"\n', "family must be one of sdxl, anima"),
        ("nsfw = 1\n", "nsfw must be true or false"),
        ('trigger_position = "middle"\n', "trigger_position must be one of"),
        ("triggers = [1]\n", "triggers must be a list of strings"),
        ('name = "  "\n', "name must be a non-empty string"),
        ("weight = nan\n", "weight must be a number"),
        ("name = \n", "Invalid value"),
    ):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            read_sidecar(path)
    path.write_text('triggers = "one"\nname = "A   b"\n', encoding="utf-8")
    sidecar = read_sidecar(path)
    assert sidecar.triggers == ("one",) and sidecar.name == "A b"


def test_keys_and_combining() -> None:
    assert lora_key("  Ｐｉｘｅｌ\u200d   Art ") == "pixel art"
    a, b = LoraFile("a", Path("a"), "1" * 64, 0.5), LoraFile("b", Path("b"), "2" * 64, 1.0)
    combined = combine_loras([a, b, a])
    assert [(c.name, c.weight) for c in combined] == [("a", 1.0), ("b", 1.0)]


def test_the_workers_lookup_finds_a_file_copied_in_later(tmp_path: Path, states: States) -> None:
    root = tmp_path / "loras"
    first = write(root / "one.safetensors", states["sdxl_kohya"])
    lookup = LoraLookup(root, tmp_path / "hashes.json", rescan_after=0.0)
    assert lookup(file_hashes(first)[0]) == first
    later = write(root / "two.safetensors", states["anima_comfy"])
    assert lookup(file_hashes(later)[0]) == later  # not in the first scan: read again on the miss
    assert lookup("0" * 64) is None

    patient = LoraLookup(root, None, rescan_after=3600.0)
    assert patient.library.get("two") is not None
    third = write(root / "three.safetensors", states["sdxl_diffusers"])
    assert patient(file_hashes(third)[0]) is None  # scanned moments ago: no second scan within rescan_after


def test_an_unwritable_hash_cache_only_costs_hashing_again(tmp_path: Path, states: States) -> None:
    root = tmp_path / "loras"
    write(root / "one.safetensors", states["sdxl_kohya"])
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache's folder should be", encoding="utf-8")
    library = LoraLibrary.scan(root, HashCache(blocked / "hashes.json"))
    assert [e.name for e in library.entries] == ["one"]
    assert list(tmp_path.glob("**/.hashes.json-*")) == []
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    cache = HashCache(tmp_path / "bad.json")
    assert LoraLibrary.scan(root, cache).entries[0].name == "one" and cache.hashed == 1
