"""Memory modes and the peak-memory estimate that picks one. Pure Python (no torch): the bot imports it too.

A mode says where the weights live while a job runs and how the VAE decodes:

    high      everything on the GPU; the VAE decodes one image at a time (slicing).
    balanced  + VAE tiling for images larger than one tile; the text encoders leave the GPU once the prompt
              is encoded (they come back for the next prompt).
    low       diffusers' model CPU offload: one component on the GPU at a time.
    minimal   sequential offload: weights stream to the GPU layer by layer. For 4-6 GB cards; slow.

The estimate is  peak = weights resident on the device + the largest working set of one phase
(text encoding, one denoising step, one VAE decode), times a fragmentation headroom. Weights are measured from
the loaded model where it is loaded (Backend.footprint) and taken from REFERENCE_FOOTPRINTS (real Animagine XL /
Anima sizes) before that. The working-set coefficients are per megapixel; docs/gpu.md has where they come from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import get_args

from inference.specs import BuiltinSource, Family, MemoryMode, MemorySetting, ModelSpec

MEMORY_MODES: tuple[MemoryMode, ...] = get_args(MemoryMode)  # most memory first
MEMORY_SETTINGS: tuple[MemorySetting, ...] = get_args(MemorySetting)

GIB = 1024**3
HALF_OF_FP32 = 0.64  # a VAE decode in fp16/bf16 against the same in fp32 (measured, docs/gpu.md)
FP32_OF_HALF = 2.0  # and the other way round
HEADROOM = 1.10  # allocator fragmentation and what the estimate does not see
MIN_RESIDENT = int(0.35 * GIB)  # minimal mode: the layers streamed in at once and the CUDA workspace

# What each mode switches on (for /model info, `animebot models` and the docs).
MODE_FEATURES: dict[MemoryMode, tuple[str, ...]] = {
    "high": ("vae slicing",),
    "balanced": ("vae slicing", "vae tiling", "text encoders offloaded after encoding"),
    "low": ("vae slicing", "vae tiling", "model cpu offload"),
    "minimal": ("vae slicing", "vae tiling", "sequential cpu offload"),
}


@dataclass(frozen=True)
class Footprint:
    """How much memory a model takes: weights per component (bytes, at the dtype they run in) and the
    working set of each phase.

    denoise_per_mp: one denoising step for one image of one megapixel, the CFG pair included.
    decode_per_mp: decoding one image of one megapixel (at the VAE's decode dtype: an fp16 SDXL VAE that
        diffusers upcasts decodes in fp32).
    tile_px: the VAE's tile edge in pixels when tiling is on; an image no larger than one tile is not tiled.
    minimal_tile_px: the tile edge in minimal mode (smaller tiles: less memory, more seams to blend).
    batches: True when the pipeline denoises the whole batch in one call (SDXL), False when it runs one
        image per call (Anima).
    typical_px: the edge of the model's usual image (1024; the tiny built-ins use 128): `auto` sizes the
        card for one such image.
    """

    denoiser: int
    text_encoders: int
    vae: int
    encode_working: int
    denoise_per_mp: int
    decode_per_mp: int
    tile_px: int
    minimal_tile_px: int
    batches: bool
    typical_px: int = 1024
    decode_element_size: int = 4  # bytes per value of the decode decode_per_mp was measured at

    def decoding_at(self, element_size: int) -> Footprint:
        """The footprint when the VAE decodes in `element_size`-byte floats (2: fp16/bf16, 4: fp32). Measured
        (docs/gpu.md): SDXL's VAE in 2-byte floats needs 0.64x its fp32 working set (2.38 against 3.75 GiB
        per megapixel), the Qwen-Image VAE in fp32 2.0x its bf16 one (7.90 against 3.94)."""
        if element_size == self.decode_element_size:
            return self
        factor = HALF_OF_FP32 if element_size < self.decode_element_size else FP32_OF_HALF
        return replace(self, decode_per_mp=int(self.decode_per_mp * factor), decode_element_size=element_size)

    @property
    def weights(self) -> int:
        return self.denoiser + self.text_encoders + self.vae

    def with_weights(self, denoiser: int, text_encoders: int, vae: int) -> Footprint:
        """The same working-set figures with measured weights."""
        return replace(self, denoiser=denoiser, text_encoders=text_encoders, vae=vae)


def _gib(value: float) -> int:
    return int(value * GIB)


# Real models at the dtype they run in on CUDA (fp16 SDXL, bf16 Anima). Weights from the component sizes
# (parameters x 2 bytes); working sets from the decode peaks measured on the CPU (docs/gpu.md).
REFERENCE_FOOTPRINTS: dict[Family, Footprint] = {
    # UNet 2.57 B params, CLIP-L 0.12 B + CLIP-G 0.69 B, VAE 0.08 B: 6.46 GiB. The fp16 VAE is upcast to
    # fp32 to decode: 3.8 GiB for one 1024x1024 image. Tiles of 1024 px (the VAE's sample_size).
    "sdxl": Footprint(
        denoiser=_gib(4.78),
        text_encoders=_gib(1.52),
        vae=_gib(0.16),
        encode_working=_gib(0.10),
        denoise_per_mp=_gib(0.60),
        decode_per_mp=_gib(3.80),
        tile_px=1024,
        minimal_tile_px=512,
        batches=True,
    ),
    # Cosmos DiT 2 B + LLM adapter, Qwen3-0.6B, Qwen-Image VAE: 5.24 GiB in bf16. The VAE needs 4.0 GiB to
    # decode 1 MP; its tiles are 256 px.
    "anima": Footprint(
        denoiser=_gib(3.89),
        text_encoders=_gib(1.11),
        vae=_gib(0.24),
        encode_working=_gib(0.10),
        denoise_per_mp=_gib(0.40),
        decode_per_mp=_gib(4.00),
        tile_px=256,
        minimal_tile_px=256,
        batches=False,
        decode_element_size=2,
    ),
}

# The built-in tiny models (random weights, a few MB): their weights are negligible; the working-set
# coefficients are the real family's, so the same arithmetic runs on them.
TINY_WEIGHTS = 16 * 1024**2


def reference_footprint(spec: ModelSpec) -> Footprint:
    """The footprint of `spec` before it is loaded: the real family's figures (tiny weights for built-ins)."""
    footprint = replace(REFERENCE_FOOTPRINTS[spec.family], typical_px=round(1024 * spec.size_scale))
    if isinstance(spec.source, BuiltinSource):
        return footprint.with_weights(TINY_WEIGHTS, TINY_WEIGHTS // 4, TINY_WEIGHTS // 8)
    return footprint


MEGAPIXEL = 1024 * 1024  # the unit of the coefficients: one 1024x1024 image


def tile_edge(footprint: Footprint, mode: MemoryMode) -> int | None:
    """The VAE's tile edge in `mode`, or None when the mode does not tile."""
    if mode == "high":
        return None
    return footprint.minimal_tile_px if mode == "minimal" else footprint.tile_px


def decode_megapixels(footprint: Footprint, width: int, height: int, mode: MemoryMode) -> float:
    """Megapixels one VAE decode works on at once: the whole image, or one tile when tiling is on."""
    tile = tile_edge(footprint, mode)
    if tile is not None and (width > tile or height > tile):
        return min(width, tile) * min(height, tile) / MEGAPIXEL
    return width * height / MEGAPIXEL


def images_per_call(footprint: Footprint, count: int) -> int:
    """How many images one pipeline call denoises at once when nothing is split."""
    return max(1, count) if footprint.batches else 1


def estimate_peak(
    footprint: Footprint, width: int, height: int, count: int, mode: MemoryMode, batch: int | None = None
) -> int:
    """Bytes the device needs at the busiest moment of a job of `count` images of width x height, run
    `batch` images per pipeline call (default: the whole job at once where the pipeline batches)."""
    megapixels = width * height / MEGAPIXEL
    batch = images_per_call(footprint, count) if batch is None else max(1, min(batch, count))
    encode = footprint.encode_working
    denoise = int(footprint.denoise_per_mp * megapixels * batch)
    decode = int(footprint.decode_per_mp * decode_megapixels(footprint, width, height, mode))  # slicing: one image

    if mode == "high":
        phases = [footprint.weights + max(encode, denoise, decode)]
    elif mode == "balanced":
        # The text encoders come back for the next prompt while the denoiser and VAE stay.
        phases = [
            footprint.weights + encode,
            footprint.denoiser + footprint.vae + max(denoise, decode),
        ]
    elif mode == "low":
        phases = [
            footprint.text_encoders + encode,
            footprint.denoiser + denoise,
            footprint.vae + decode,
        ]
    else:  # minimal: each component streams in a few layers at a time (all of it, when it is small)
        phases = [
            min(MIN_RESIDENT, footprint.text_encoders) + encode,
            min(MIN_RESIDENT, footprint.denoiser) + denoise,
            min(MIN_RESIDENT, footprint.vae) + decode,
        ]
    return int(max(phases) * HEADROOM)


@dataclass(frozen=True)
class JobPlan:
    """How a job runs: in which mode, and how many images per pipeline call."""

    mode: MemoryMode
    batch: int
    peak: int  # the estimate, bytes


def plan_job(
    budget: int | None, footprint: Footprint, width: int, height: int, count: int, start: MemoryMode = "high"
) -> JobPlan | None:
    """The fastest way to run a job within `budget` bytes, from mode `start` down: in each mode the whole
    batch first, then halves down to one image per call (splitting a batch costs little on a GPU, a lower
    mode costs much). None when even minimal mode with one image per call does not fit. No budget (the
    CPU, or a device that does not report its memory) means the job runs as asked."""
    whole = images_per_call(footprint, count)
    if budget is None:
        return JobPlan(start, whole, estimate_peak(footprint, width, height, count, start, whole))
    for mode in MEMORY_MODES[MEMORY_MODES.index(start) :]:
        batch = whole
        while True:
            peak = estimate_peak(footprint, width, height, count, mode, batch)
            if peak <= budget:
                return JobPlan(mode, batch, peak)
            if batch == 1:
                break
            batch = max(1, batch // 2)
    return None


def fitting_mode(
    budget: int | None, footprint: Footprint, width: int, height: int, count: int, start: MemoryMode = "high"
) -> MemoryMode | None:
    """The mode plan_job would run the job in; None when it cannot run in any."""
    plan = plan_job(budget, footprint, width, height, count, start)
    return None if plan is None else plan.mode


def choose_mode(budget: int | None, footprint: Footprint) -> MemoryMode:
    """What `auto` picks for a card with `budget` bytes free: the fastest mode in which a typical job (one
    image of the model's usual size, 1024x1024) fits; minimal when even that does not fit (the pre-flight
    check then refuses what cannot run)."""
    edge = footprint.typical_px
    return fitting_mode(budget, footprint, edge, edge, 1) or "minimal"


def resolve_mode(setting: MemorySetting, budget: int | None, footprint: Footprint) -> MemoryMode:
    """The mode a model runs in: the configured one, or the one `auto` picks for `budget`."""
    if setting == "auto":
        return choose_mode(budget, footprint)
    return setting


def step_down(mode: MemoryMode) -> MemoryMode | None:
    """The next mode that uses less memory (after an out-of-memory error); None below minimal."""
    index = MEMORY_MODES.index(mode)
    return MEMORY_MODES[index + 1] if index + 1 < len(MEMORY_MODES) else None


def gib(value: int) -> str:
    """Bytes as a short GiB figure for messages: `6.5 GiB`."""
    return f"{value / GIB:.1f} GiB"
