"""A user's generation request, validated and resolved against a model into final parameters (pure)."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace

from bot.core.errors import UserError
from bot.prompts.builder import BuiltPrompt, PromptChoices, TagLookup, build_prompt
from bot.prompts.dialects import Bucket, Dialect, load_dialect
from inference.samplers import SAMPLERS, samplers_for
from inference.specs import ModelSpec
from inference.types import GenerationParams

MAX_PROMPT_LENGTH = 2000
STEPS_RANGE = (1, 150)
CFG_RANGE = (0.0, 30.0)
COUNT_RANGE = (1, 8)
SIZE_RANGE = (256, 2048)  # for full-size models; scaled by the model's size_scale
SEED_MAX = 2**32 - 1
# Width and height must be multiples of this: SDXL's VAE downscales by 8; Anima's VAE by 8 and its DiT
# patches 2x2 latents.
SIZE_MULTIPLE = {"sdxl": 8, "anima": 16}


@dataclass(frozen=True)
class GenerationRequest:
    """What a user asked for, before any model-specific resolution."""

    model: str
    choices: PromptChoices
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    aspect: str | None = None  # a bucket name such as "13:19", or any W:H (nearest bucket)
    size: str | None = None  # "WxH", exact
    count: int = 1
    sampler: str | None = None
    # False where nsfw content is not allowed (Discord: channels that are not age-restricted, DMs):
    # a questionable/explicit rating, chosen or typed in the prompt, is refused, and the model's nsfw
    # tags go into the negative prompt.
    nsfw_allowed: bool = True


@dataclass(frozen=True)
class ResolvedRequest:
    request: GenerationRequest
    spec: ModelSpec
    dialect: Dialect
    prompt: BuiltPrompt
    params: GenerationParams


def _check_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise UserError("out_of_range", name=name, low=bounds[0], high=bounds[1], value=value)


def scaled(value: int, scale: float) -> int:
    """A pixel size times the model's size_scale, kept a multiple of 16 (and at least 64)."""
    if scale == 1.0:
        return value
    return max(64, math.floor(value * scale / 16 + 0.5) * 16)


def bucket_size(bucket: Bucket, spec: ModelSpec) -> tuple[int, int]:
    return scaled(bucket.width, spec.size_scale), scaled(bucket.height, spec.size_scale)


def resolve_size(request: GenerationRequest, spec: ModelSpec, dialect: Dialect) -> tuple[int, int]:
    if request.aspect and request.size:
        raise UserError("aspect_and_size")
    if request.size:
        match = re.fullmatch(r"\s*(\d+)\s*[xX×*]\s*(\d+)\s*", request.size)
        low, high = (scaled(v, spec.size_scale) for v in SIZE_RANGE)
        multiple = SIZE_MULTIPLE[spec.family]
        if not match:
            raise UserError("bad_size", value=request.size, low=low, high=high, multiple=multiple)
        width, height = int(match.group(1)), int(match.group(2))
        for v in (width, height):
            if not low <= v <= high or v % multiple:
                raise UserError("bad_size", value=request.size, low=low, high=high, multiple=multiple)
        return width, height
    if request.aspect:
        aspect = request.aspect.strip()
        bucket = dialect.bucket(aspect)
        if bucket is None:
            match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*[:/]\s*(\d+(?:\.\d+)?)", aspect)
            if not match or float(match.group(1)) <= 0 or float(match.group(2)) <= 0:
                options = ", ".join(b.aspect for b in dialect.buckets)
                raise UserError("unknown_aspect", value=aspect, model=dialect.name, options=options)
            ratio_w, ratio_h = float(match.group(1)), float(match.group(2))
            bucket = dialect.nearest_bucket(round(ratio_w * 1000), round(ratio_h * 1000))
        return bucket_size(bucket, spec)
    return bucket_size(dialect.default_bucket, spec)


def resolve_request(
    request: GenerationRequest,
    models: Mapping[str, ModelSpec],
    tags: TagLookup | None = None,
) -> ResolvedRequest:
    """Check every field and turn the request into the exact parameters the backend will get.

    Raises UserError with a message key on bad input; nothing is changed anywhere."""
    spec = models.get(request.model)
    if spec is None:
        raise UserError("unknown_model", value=request.model, options=", ".join(models))
    dialect = load_dialect(spec.dialect)
    if len(request.choices.prompt) > MAX_PROMPT_LENGTH:
        raise UserError("prompt_too_long", length=len(request.choices.prompt), limit=MAX_PROMPT_LENGTH)

    steps = dialect.steps if request.steps is None else request.steps
    cfg = dialect.cfg if request.cfg is None else float(request.cfg)
    _check_range("steps", steps, STEPS_RANGE)
    _check_range("cfg", cfg, CFG_RANGE)
    _check_range("count", request.count, COUNT_RANGE)
    sampler = request.sampler or dialect.sampler
    if sampler not in SAMPLERS or spec.family not in SAMPLERS[sampler].families:
        options = ", ".join(s.id for s in samplers_for(spec.family))
        raise UserError("unknown_sampler", model=dialect.name, value=sampler, options=options)
    if request.seed is not None:
        _check_range("seed", request.seed, (0, SEED_MAX))
    width, height = resolve_size(request, spec, dialect)
    choices = request.choices if request.nsfw_allowed else replace(request.choices, sfw=True)
    built = build_prompt(dialect, choices, tags)
    refused = built.ratings & dialect.choices.nsfw_ratings
    if refused and not request.nsfw_allowed:
        raise UserError("nsfw_not_allowed", value=", ".join(sorted(refused)))

    seed = secrets.randbelow(SEED_MAX + 1) if request.seed is None else request.seed
    seeds = tuple((seed + i) % (SEED_MAX + 1) for i in range(request.count))
    params = GenerationParams(
        prompt=built.prompt,
        negative_prompt=built.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        cfg=cfg,
        seeds=seeds,
        sampler=sampler,
    )
    return ResolvedRequest(request, spec, dialect, built, params)
