"""The anime image tagger: SmilingWolf's WD tagger v3 family (ONNX, run by onnxruntime, on the CPU by default).

A model is a folder (a hub repo or a local copy) with `model.onnx` and `selected_tags.csv`
(`tag_id,name,category,count`: the output order). The model takes NHWC float32 images: one side read from
the model's input shape (448), BGR channel order, pixel values 0-255, the image padded to a square on
white and resized with bicubic filtering. Its output is one probability per row of selected_tags.csv
(the sigmoid is part of the graph). Category 9 rows are the rating head (general, sensitive,
questionable, explicit), 4 the characters, 0 the general tags.

`Tagger.tag(image)` is thread-safe and blocking: callers on an event loop run it in a thread
(`asyncio.to_thread`). `TaggerLoader` loads the model once, on first use, and hands every caller the
same one; `shared_loader(options)` is the one loader of the process for those options (the /describe
command and the rating of results share one model in memory). `open_image` reads untrusted image bytes
(an upload) within limits. Errors are `TaggerError` (the model cannot be had or used) and `ImageRejected`
(the image is not acceptable), each one line.
"""

from __future__ import annotations

import csv
import io
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

Rating = Literal["general", "sensitive", "questionable", "explicit"]
RATINGS: tuple[Rating, ...] = ("general", "sensitive", "questionable", "explicit")

DEFAULT_MODEL = "SmilingWolf/wd-vit-tagger-v3"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
GENERAL_CATEGORY = 0
CHARACTER_CATEGORY = 4
RATING_CATEGORY = 9
DEFAULT_GENERAL_THRESHOLD = 0.35
DEFAULT_CHARACTER_THRESHOLD = 0.85

# Image formats an upload may be in (a GIF is read from its first frame), by PIL's format name.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 25_000_000  # 5000x5000; a decoded RGBA image of this size takes 100 MB
WHITE = (255, 255, 255)


class TaggerError(Exception):
    """The tagger model cannot be had (not downloadable, not in the cache) or used (not a tagger)."""


class ImageRejected(Exception):
    """An image that is not accepted. `reason`: too_big (bytes), bad_type, too_many_pixels, unreadable;
    `params`: what the message needs (limits, sizes)."""

    def __init__(self, reason: str, **params: object) -> None:
        super().__init__(f"{reason}: {params}" if params else reason)
        self.reason = reason
        self.params = params


@dataclass(frozen=True)
class TagResult:
    """What the tagger sees in one image. Tags are Danbooru names (underscored), highest score first."""

    rating: Rating  # the rating head's highest
    rating_scores: dict[Rating, float]
    general: list[tuple[str, float]]  # general tags at or above the general threshold
    characters: list[tuple[str, float]]  # character tags at or above the character threshold


@dataclass(frozen=True)
class Labels:
    """selected_tags.csv: the name and category of each output, in output order."""

    names: tuple[str, ...]
    categories: tuple[int, ...]
    rating_index: dict[Rating, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def read_labels(path: Path) -> Labels:
    """The labels of a selected_tags.csv; TaggerError if it is not one (no rating rows, no name column)."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise TaggerError(f"cannot read the tag list {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise TaggerError(f"{path}: not a tag list (CSV) ({e})") from None
    names: list[str] = []
    categories: list[int] = []
    for number, row in enumerate(rows, start=2):
        name, category = row.get("name"), row.get("category")
        if not name or category is None or not category.strip().isdigit():
            raise TaggerError(f"{path}: line {number}: needs a name and a numeric category")
        names.append(name.strip())
        categories.append(int(category))
    ratings = {name: i for i, (name, c) in enumerate(zip(names, categories, strict=True)) if c == RATING_CATEGORY}
    missing = [r for r in RATINGS if r not in ratings]
    if missing:
        raise TaggerError(f"{path}: no rating rows (category {RATING_CATEGORY}) for {', '.join(missing)}")
    return Labels(tuple(names), tuple(categories), {r: ratings[r] for r in RATINGS})


def prepare_image(image: Image.Image, side: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The model's input for one image: (1, side, side, 3) float32, BGR, 0-255. Transparency is laid on
    white, the image padded to a centred square on white, then resized (bicubic) to `side`."""
    image = _rgb_on_white(image)
    width, height = image.size
    square = max(width, height)
    padded = Image.new("RGB", (square, square), WHITE)
    padded.paste(image, ((square - width) // 2, (square - height) // 2))
    if square != side:
        padded = padded.resize((side, side), Image.Resampling.BICUBIC)
    array = np.asarray(padded, dtype=np.float32)[:, :, ::-1]  # RGB → BGR
    return np.ascontiguousarray(array)[np.newaxis]


def _rgb_on_white(image: Image.Image) -> Image.Image:
    if image.mode not in ("RGB", "RGBA"):
        transparent = image.mode in ("LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, (*WHITE, 255))
        canvas.alpha_composite(image)
        image = canvas.convert("RGB")
    return image


def open_image(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Untrusted image bytes as a decoded image (a GIF's first frame), or ImageRejected: more than
    `max_bytes`, not PNG/JPEG/WebP/GIF, more than `max_pixels` (checked from the header, before anything
    is decoded: a decompression bomb is refused without being expanded), or unreadable (truncated,
    corrupt)."""
    if len(data) > max_bytes:
        raise ImageRejected("too_big", size=len(data), limit=max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected("too_many_pixels", limit=max_pixels)
            image.seek(0)
            image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("bad_type") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_many_pixels", limit=max_pixels) from None  # PIL's own limit
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError):  # truncated, corrupt, absurd headers
        raise ImageRejected("unreadable") from None
    return image


class Tagger:
    """One loaded tagger model. `tag` may be called from several threads at once."""

    def __init__(
        self,
        model_path: Path,
        tags_path: Path,
        *,
        general_threshold: float = DEFAULT_GENERAL_THRESHOLD,
        character_threshold: float = DEFAULT_CHARACTER_THRESHOLD,
        device: str = "cpu",
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        self.labels = read_labels(tags_path)
        self.general_threshold = general_threshold
        self.character_threshold = character_threshold
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise TaggerError("tagger device 'cuda': this onnxruntime has no CUDA provider (onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own types (Fail, InvalidGraph, NoSuchFile...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TaggerError(f"cannot load the tagger model {model_path}: {first}") from None
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]
        self.side = self._check_signature()

    def _check_signature(self) -> int:
        shape = list(self.input.shape)
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise TaggerError(f"not a WD tagger model: input shape {shape}, expected [batch, side, side, 3]")
        if self.input.type != "tensor(float)":
            raise TaggerError(f"not a WD tagger model: input type {self.input.type}, expected float32")
        outputs = list(self.output.shape)
        if len(outputs) != 2 or (isinstance(outputs[1], int) and outputs[1] != len(self.labels)):
            raise TaggerError(
                f"the tagger model has {outputs[-1]} outputs but its tag list {len(self.labels)} rows"
            )
        return int(shape[1])

    def scores(self, image: Image.Image) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The model's probability for every label, in label order."""
        batch = prepare_image(image, self.side)
        out = self.session.run([self.output.name], {self.input.name: batch})[0]
        scores = np.asarray(out, dtype=np.float32).reshape(-1)
        if scores.shape[0] != len(self.labels):
            raise TaggerError(f"the tagger model gave {scores.shape[0]} scores for {len(self.labels)} tags")
        return scores

    def tag(
        self,
        image: Image.Image,
        *,
        general_threshold: float | None = None,
        character_threshold: float | None = None,
    ) -> TagResult:
        """The rating and the tags above the thresholds (the tagger's own unless given)."""
        scores = self.scores(image)
        general_at = self.general_threshold if general_threshold is None else general_threshold
        character_at = self.character_threshold if character_threshold is None else character_threshold
        rating_scores = {r: float(scores[i]) for r, i in self.labels.rating_index.items()}
        rating = max(RATINGS, key=lambda r: rating_scores[r])
        general: list[tuple[str, float]] = []
        characters: list[tuple[str, float]] = []
        for index in np.argsort(-scores, kind="stable"):
            score = float(scores[index])
            category = self.labels.categories[index]
            if category == GENERAL_CATEGORY and score >= general_at:
                general.append((self.labels.names[index], score))
            elif category == CHARACTER_CATEGORY and score >= character_at:
                characters.append((self.labels.names[index], score))
        return TagResult(rating, rating_scores, general, characters)


@dataclass(frozen=True)
class TaggerOptions:
    """Where the tagger comes from and how it tags. `source`: a hub repo id (org/name), a local folder
    holding model.onnx and selected_tags.csv, or a .onnx file with selected_tags.csv beside it."""

    source: str = DEFAULT_MODEL
    revision: str | None = None
    general_threshold: float = DEFAULT_GENERAL_THRESHOLD
    character_threshold: float = DEFAULT_CHARACTER_THRESHOLD
    device: Literal["cpu", "cuda"] = "cpu"
    local_files_only: bool = False
    threads: int = 0  # onnxruntime's intra-op threads; 0: its default


def model_files(options: TaggerOptions) -> tuple[Path, Path]:
    """model.onnx and selected_tags.csv of `options.source`, downloaded into the Hugging Face cache the
    first time for a hub id (never with local_files_only). TaggerError when they cannot be had."""
    path = Path(options.source).expanduser()
    if path.is_dir():
        return _existing(path / MODEL_FILE), _existing(path / TAGS_FILE)
    if path.suffix.lower() == ".onnx" or path.is_file():
        return _existing(path), _existing(path.parent / TAGS_FILE)
    parts = options.source.split("/")
    if len(parts) != 2 or not all(parts):
        raise TaggerError(f"tagger model {options.source!r}: no such folder or file, and not a hub id (org/name)")
    return _download(options, MODEL_FILE), _download(options, TAGS_FILE)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise TaggerError(f"tagger model: missing {path}")
    return path


def _download(options: TaggerOptions, filename: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            hf_hub_download(
                options.source, filename, revision=options.revision, local_files_only=options.local_files_only
            )
        )
    except LocalEntryNotFoundError:
        if options.local_files_only:
            raise TaggerError(
                f"tagger model {options.source}: {filename} is not in the local Hugging Face cache "
                "(local_files_only is set: download it once without it)"
            ) from None
        raise TaggerError(f"tagger model {options.source}: cannot download {filename} (no connection?)") from None
    except (HfHubHTTPError, EntryNotFoundError) as e:  # no such repo or file, no access, a server error
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TaggerError(f"tagger model {options.source}: cannot download {filename}: {first}") from None
    except (OSError, ValueError) as e:
        raise TaggerError(f"tagger model {options.source}: cannot download {filename}: {e}") from None


def load_tagger(options: TaggerOptions) -> Tagger:
    model, tags = model_files(options)
    return Tagger(
        model,
        tags,
        general_threshold=options.general_threshold,
        character_threshold=options.character_threshold,
        device=options.device,
        threads=options.threads,
    )


class TaggerLoader:
    """The tagger of `options`, loaded (downloaded) on the first `get()` and shared after that. A failed
    load is not remembered: the next `get()` tries again (the network may be back). Blocking."""

    def __init__(self, options: TaggerOptions) -> None:
        self.options = options
        self._tagger: Tagger | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._tagger is not None

    def get(self) -> Tagger:
        tagger = self._tagger
        if tagger is not None:
            return tagger
        with self._lock:
            if self._tagger is None:
                self._tagger = load_tagger(self.options)
            return cast(Tagger, self._tagger)


_loaders: dict[TaggerOptions, TaggerLoader] = {}
_loaders_lock = threading.Lock()


def shared_loader(options: TaggerOptions) -> TaggerLoader:
    """The process's loader for `options` (created, not loaded, on the first call)."""
    with _loaders_lock:
        loader = _loaders.get(options)
        if loader is None:
            loader = _loaders[options] = TaggerLoader(options)
        return loader
