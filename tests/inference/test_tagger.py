"""The WD tagger code path (preprocessing, the model's signature, thresholds, loading) on the tiny
stand-in model built in code (inference/tiny/tagger.py), and the upload checks of open_image."""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from inference.tagger import (
    IMAGE_FORMATS,
    ImageRejected,
    Tagger,
    TaggerError,
    TaggerLoader,
    TaggerOptions,
    load_tagger,
    model_files,
    open_image,
    prepare_image,
    read_labels,
    shared_loader,
)
from inference.tiny.tagger import write_tiny_tagger
from tests.fuzz import fuzz_settings


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


@pytest.fixture(scope="module")
def tagger(tiny_dir: Path) -> Tagger:
    return load_tagger(TaggerOptions(str(tiny_dir)))


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_prepare_image_pads_on_white_resizes_and_swaps_to_bgr() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))  # wide: white bands above and below
    batch = prepare_image(image, 8)
    assert batch.shape == (1, 8, 8, 3) and batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    middle, top = batch[0, 4, 4], batch[0, 0, 4]
    assert middle.tolist() == [0.0, 0.0, 255.0]  # red, as B, G, R
    assert top.tolist() == [255.0, 255.0, 255.0]  # the padding is white
    assert batch.min() >= 0.0 and batch.max() <= 255.0


def test_prepare_image_matches_the_reference_steps() -> None:
    """The reference preprocessing, step by step: pad (centred, white) with numpy, bicubic resize, BGR."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)  # 50 wide, 30 high
    padded = np.pad(pixels, ((10, 10), (0, 0), (0, 0)), constant_values=255)
    expected = np.asarray(Image.fromarray(padded).resize((16, 16), Image.Resampling.BICUBIC), dtype=np.float32)
    got = prepare_image(Image.fromarray(pixels), 16)[0]
    assert np.array_equal(got, expected[:, :, ::-1])
    bilinear = np.asarray(Image.fromarray(padded).resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32)
    assert not np.array_equal(got, bilinear[:, :, ::-1])


def test_prepare_image_lays_transparency_on_white() -> None:
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert prepare_image(clear, 10).min() == 255.0
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert prepare_image(palette, 10).min() == 255.0
    gray = Image.new("L", (10, 10), 0)
    assert prepare_image(gray, 10).max() == 0.0


def test_side_is_read_from_the_model(tmp_path: Path) -> None:
    folder = write_tiny_tagger(tmp_path / "small", side=64)
    tagger = load_tagger(TaggerOptions(str(folder)))
    assert tagger.side == 64
    assert tagger.tag(Image.new("RGB", (500, 500), (255, 0, 0))).rating == "explicit"


def test_the_tiny_model_has_the_real_signature(tagger: Tagger) -> None:
    assert tagger.side == 448
    assert tagger.input.shape[1:] == [448, 448, 3] and tagger.input.type == "tensor(float)"
    assert tagger.output.shape[1] == len(tagger.labels)


def test_rating_and_tags_follow_the_image(tagger: Tagger) -> None:
    white = tagger.tag(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert white.rating == "general"
    assert [t for t, _ in white.general] == ["smile", "1girl", "solo"]  # highest score first
    assert white.characters == []
    assert set(white.rating_scores) == {"general", "sensitive", "questionable", "explicit"}

    red = tagger.tag(Image.new("RGB", (64, 64), (255, 0, 0)))
    assert red.rating == "explicit" and red.rating_scores["explicit"] > 0.9
    assert "smile" not in dict(red.general)

    blue = tagger.tag(Image.new("RGB", (64, 64), (0, 0, 255)))
    assert blue.rating == "general"
    assert [t for t, _ in blue.characters] == ["ganyu_(genshin_impact)"]


def test_red_and_blue_channels_are_not_swapped(tagger: Tagger) -> None:
    """The model reads BGR: a red image given as RGB would look blue and get the character."""
    red = tagger.tag(Image.new("RGB", (64, 64), (255, 0, 0)))
    assert red.characters == [] and red.rating == "explicit"


def test_thresholds_per_category(tiny_dir: Path, tagger: Tagger) -> None:
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    # hatsune_miku scores 0.6: above the general threshold, below the character one.
    assert "hatsune_miku" not in dict(tagger.tag(white).characters)
    assert "hatsune_miku" in dict(tagger.tag(white, character_threshold=0.5).characters)
    assert "hatsune_miku" not in dict(tagger.tag(white, character_threshold=0.5).general)  # never a general tag
    strict = load_tagger(TaggerOptions(str(tiny_dir), general_threshold=0.97))
    assert [t for t, _ in strict.tag(white).general] == ["smile", "1girl"]
    assert [t for t, _ in tagger.tag(white, general_threshold=0.999).general] == []


def test_padding_counts_like_the_real_tagger(tagger: Tagger) -> None:
    """A thin red strip is mostly white padding once squared: not explicit."""
    strip = Image.new("RGB", (400, 20), (255, 0, 0))
    assert tagger.tag(strip).rating == "general"


def test_a_model_file_path_and_its_tag_list(tiny_dir: Path) -> None:
    model, tags = model_files(TaggerOptions(str(tiny_dir / "model.onnx")))
    assert model == tiny_dir / "model.onnx" and tags == tiny_dir / "selected_tags.csv"


def test_missing_or_wrong_files_are_one_line_errors(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(TaggerError, match="missing"):
        model_files(TaggerOptions(str(tmp_path)))
    with pytest.raises(TaggerError, match="not a hub id"):
        model_files(TaggerOptions("no/such/place"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"not onnx")
    (bad / "selected_tags.csv").write_text("tag_id,name,category,count\n1,general,9,1\n", encoding="utf-8")
    with pytest.raises(TaggerError, match="rating rows") as info:
        load_tagger(TaggerOptions(str(bad)))
    assert "\n" not in str(info.value)
    (bad / "selected_tags.csv").write_bytes((tiny_dir / "selected_tags.csv").read_bytes())
    with pytest.raises(TaggerError, match="cannot load the tagger model") as info:
        load_tagger(TaggerOptions(str(bad)))
    assert "\n" not in str(info.value)


def test_a_tag_list_that_does_not_match_the_model(tmp_path: Path, tiny_dir: Path) -> None:
    folder = tmp_path / "short"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((tiny_dir / "model.onnx").read_bytes())
    rows = (tiny_dir / "selected_tags.csv").read_text(encoding="utf-8").splitlines()[:-1]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(TaggerError, match="10 outputs but its tag list 9 rows"):
        load_tagger(TaggerOptions(str(folder)))


def test_labels_in_csv_order(tiny_dir: Path) -> None:
    labels = read_labels(tiny_dir / "selected_tags.csv")
    assert labels.names[:4] == ("general", "sensitive", "questionable", "explicit")
    assert labels.rating_index == {"general": 0, "sensitive": 1, "questionable": 2, "explicit": 3}


def test_hub_id_with_local_files_only_is_not_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(TaggerError, match="not in the local Hugging Face cache"):
        model_files(TaggerOptions("SmilingWolf/wd-vit-tagger-v3", local_files_only=True))


def test_hub_id_from_the_cache(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id is read through huggingface_hub: from its cache when local_files_only is set."""
    cache = tmp_path / "hub"
    repo = cache / "models--SmilingWolf--wd-vit-tagger-v3"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    for name in ("model.onnx", "selected_tags.csv"):
        (snapshot / name).write_bytes((tiny_dir / name).read_bytes())
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    tagger = load_tagger(TaggerOptions("SmilingWolf/wd-vit-tagger-v3", local_files_only=True))
    assert tagger.tag(Image.new("RGB", (8, 8), (255, 0, 0))).rating == "explicit"


def test_loader_loads_once_across_threads(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[int] = []
    real = load_tagger

    def counting(options: TaggerOptions) -> Tagger:
        loads.append(1)
        return real(options)

    monkeypatch.setattr("inference.tagger.load_tagger", counting)
    loader = TaggerLoader(TaggerOptions(str(tiny_dir)))
    assert not loader.loaded
    got: list[Tagger] = []
    threads = [threading.Thread(target=lambda: got.append(loader.get())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len({id(t) for t in got}) == 1 and loader.loaded


def test_one_shared_loader_per_options(tiny_dir: Path) -> None:
    options = TaggerOptions(str(tiny_dir))
    assert shared_loader(options) is shared_loader(TaggerOptions(str(tiny_dir)))
    assert shared_loader(options) is not shared_loader(TaggerOptions(str(tiny_dir), general_threshold=0.5))


def test_loader_retries_after_a_failure(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    loader = TaggerLoader(TaggerOptions(str(folder)))
    folder.mkdir()
    with pytest.raises(TaggerError):
        loader.get()
    write_tiny_tagger(folder)
    assert loader.get().side == 448


def test_tagging_from_threads_gives_the_same_answers(tagger: Tagger) -> None:
    images = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255), (255, 255, 255))] * 4
    expected = [tagger.tag(i) for i in images]
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda n=n: results.update({n: tagger.tag(images[n])})) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[n] for n in range(12)] == expected


# --- open_image: what an upload may be --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_open_image_accepts_the_four_formats(fmt: str) -> None:
    image = open_image(encoded(Image.new("RGB", (30, 20), (0, 0, 255)), fmt))
    assert image.size == (30, 20)


def test_open_image_reads_a_gif_from_its_first_frame(tagger: Tagger) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tagger.tag(open_image(data)).rating == "explicit"  # the red first frame, not the blue second


def test_open_image_refusals() -> None:
    with pytest.raises(ImageRejected) as info:
        open_image(b"x" * 101, max_bytes=100)
    assert info.value.reason == "too_big"
    for data in (b"GIF89a-not-really", b"%PDF-1.4", encoded(Image.new("RGB", (4, 4)), "BMP"), b""):
        with pytest.raises(ImageRejected) as info:
            open_image(data)
        assert info.value.reason in ("bad_type", "unreadable"), data[:10]
    with pytest.raises(ImageRejected) as info:
        open_image(encoded(Image.new("RGB", (4, 4)), "BMP"))
    assert info.value.reason == "bad_type"
    truncated = encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:-30]
    with pytest.raises(ImageRejected) as info:
        open_image(truncated)
    assert info.value.reason == "unreadable"


def test_open_image_refuses_a_decompression_bomb_before_decoding() -> None:
    """Small PNGs that claim 6000x5000 pixels (past our limit) and 30000x30000 (past PIL's own): refused from
    their headers, never expanded."""
    for size in ((6000, 5000), (30000, 30000)):
        bomb = encoded(Image.new("1", size), "PNG")
        assert len(bomb) < 200_000
        with pytest.raises(ImageRejected) as info:
            open_image(bomb)
        assert info.value.reason == "too_many_pixels" and info.value.params["limit"] == 25_000_000
    with pytest.raises(ImageRejected) as info:
        open_image(encoded(Image.new("RGB", (100, 100)), "PNG"), max_pixels=9999)
    assert info.value.reason == "too_many_pixels"
    assert open_image(encoded(Image.new("RGB", (100, 100)), "PNG"), max_pixels=10000).size == (100, 100)


def _seed_images() -> list[bytes]:
    images = []
    for fmt in IMAGE_FORMATS:
        image = Image.new("RGB", (24, 16), (10, 200, 30))
        images.append(encoded(image, fmt))
    return images


SEEDS = _seed_images()


@fuzz_settings(150)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10_000),
)
def test_open_image_on_damaged_files_rejects_or_decodes(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    """A hostile upload (a real image with bytes changed, cut short): a decoded image within the limits or
    ImageRejected, never another exception."""
    data = bytearray(seed)
    for where, value in edits:
        data[where % len(data)] = value
    data = data[: max(1, len(data) - cut % len(data))]
    try:
        image = open_image(bytes(data), max_pixels=1_000_000)
    except ImageRejected as e:
        assert e.reason in ("bad_type", "too_many_pixels", "unreadable")
    else:
        assert image.width * image.height <= 1_000_000
        assert prepare_image(image, 8).shape == (1, 8, 8, 3)


@fuzz_settings(100)
@given(data=st.binary(max_size=2000))
def test_open_image_on_random_bytes(data: bytes) -> None:
    """Random bytes: decoded or ImageRejected, never another exception."""
    with contextlib.suppress(ImageRejected):
        open_image(data)
