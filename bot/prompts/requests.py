"""A user's generation request, validated and resolved against a model into final parameters (pure)."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from bot.core.errors import UserError
from bot.prompts.builder import (
    MAX_ARTIST_LENGTH,
    BuiltPrompt,
    PromptChoices,
    TagLookup,
    build_prompt,
    negative_prompt,
)
from bot.prompts.dialects import Bucket, Dialect, load_dialect
from bot.prompts.loras import (
    DEFAULT_MAX_LORAS,
    DEFAULT_MAX_WEIGHT,
    extract_prompt_loras,
    lora_option,
    parse_lora_option,
    resolve_loras,
    with_triggers,
)
from bot.prompts.policy import PolicyFields, Verdict, content_policy, normalize_optional, normalize_text
from inference.loras import LoraLibrary
from inference.samplers import SAMPLERS, samplers_for
from inference.specs import ModelSpec
from inference.types import GenerationParams, HiresFix, SourceImage, scaled_size

MAX_PROMPT_LENGTH = 2000  # the prompt and the negative prompt, each
MAX_ARTIST_FIELD = 10 * MAX_ARTIST_LENGTH  # the artist option (several names, comma-separated)
MAX_OPTION_LENGTH = 100  # any other text option (quality, year, rating, aspect, size, sampler, model)
MAX_LORA_FIELD = 500  # the lora option (several names with weights, comma-separated)
ASPECT_LIMIT = 1000.0  # W:H beyond 1000:1 either way is read as the extreme bucket
STEPS_RANGE = (1, 150)
CFG_RANGE = (0.0, 30.0)
COUNT_RANGE = (1, 8)
SIZE_RANGE = (256, 2048)  # for full-size models; scaled by the model's size_scale
SEED_MAX = 2**32 - 1
STRENGTH_RANGE = (0.05, 1.0)  # img2img's strength a user may give (diffusers: the share of the steps re-run)
SCALE_RANGE = (1.0, 2.0)  # an upscale's factor (the ⬆ button offers x1.5 and x2)
# The largest image a job may make (a hires fix or an upscale), for full-size models; scaled by size_scale (squared
# for the pixels): 2048x2048 in pixels (1024x1024 x2, 832x1216 x2), 4096 on a side.
MAX_OUTPUT_PIXELS = 2048 * 2048
MAX_OUTPUT_SIDE = 4096
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
    lora: str | None = None  # the lora option: "name, other:0.6" (a prompt's <lora:name:0.8> adds to it)
    hires: bool = False  # the hires fix in the same job, at the model's defaults
    strength: float | None = None  # image to image: how much of the source changes (None: the kind's default)
    kind: JobKind = "txt2img"
    source: SourceImage | None = None  # img2img / vary / upscale: set by the service, never typed by a user
    scale: float | None = None  # upscale: the factor (None: the model's default)


# txt2img: from a prompt. img2img: from an uploaded image. vary: a result again from itself, new seed.
# upscale: a result made larger and refined (its parent's seed).
JobKind = Literal["txt2img", "img2img", "vary", "upscale"]


@dataclass(frozen=True)
class ResolvedRequest:
    request: GenerationRequest
    spec: ModelSpec
    dialect: Dialect
    prompt: BuiltPrompt
    params: GenerationParams
    verdict: Verdict  # the content policy's decision, stored with the job


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
        match = re.fullmatch(r"\s*(\d{1,5})\s*[xX×*]\s*(\d{1,5})\s*", request.size, re.ASCII)
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
            match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*[:/]\s*(\d+(?:\.\d+)?)", aspect, re.ASCII)
            ratio_w, ratio_h = (float(match.group(1)), float(match.group(2))) if match else (0.0, 0.0)
            if not all(0 < v < math.inf for v in (ratio_w, ratio_h)):
                options = ", ".join(b.aspect for b in dialect.buckets)
                raise UserError("unknown_aspect", value=aspect, model=dialect.name, options=options)
            # Huge or tiny values (400 digits) overflow neither: the ratio is clamped to the extreme buckets.
            ratio = min(max(ratio_w / ratio_h, 1 / ASPECT_LIMIT), ASPECT_LIMIT)
            bucket = dialect.nearest_bucket(round(ratio * 1_000_000), 1_000_000)
        return bucket_size(bucket, spec)
    return bucket_size(dialect.default_bucket, spec)


def _source_size(request: GenerationRequest) -> tuple[int, int]:
    """A vary or upscale job's source size: the parent image's "WxH", which the service puts in `size`."""
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", request.size or "", re.ASCII)
    if match is None:
        raise ValueError(f"a {request.kind} request needs its source's size as WxH, not {request.size!r}")
    return int(match.group(1)), int(match.group(2))


def resolve_tools(
    request: GenerationRequest, spec: ModelSpec, dialect: Dialect
) -> tuple[int, int, float, HiresFix | None]:
    """The size of the first pass, the img2img strength and the hires fix of a request, by its kind:
    txt2img (strength 1, no source), img2img (an upload: its nearest bucket, the user's strength or the model's
    img2img default), vary (the parent's size, the model's vary strength), upscale (the parent's size times the
    scale, the model's hires strength). Refuses (UserError) an image larger than the models make."""
    tools = dialect.tools
    if request.kind != "txt2img" and request.source is None:
        raise ValueError(f"a {request.kind} request needs a source image")
    if request.kind == "txt2img" and request.source is not None:
        raise ValueError("a txt2img request has no source image")
    if request.strength is not None:
        if request.kind != "img2img":
            raise UserError("strength_needs_image")
        _check_range("strength", request.strength, STRENGTH_RANGE)
    hires = HiresFix(tools.hires_scale, tools.hires_strength) if request.hires else None
    if request.kind == "vary" or request.kind == "upscale":
        width, height = _source_size(request)
        hires = None  # the job is itself the second pass
        if request.kind == "vary":
            strength = tools.vary_strength
        else:
            scale = tools.hires_scale if request.scale is None else request.scale
            _check_range("scale", scale, SCALE_RANGE)
            width, height = scaled_size(width, height, scale)
            strength = tools.hires_strength
    else:
        width, height = resolve_size(request, spec, dialect)
        default = tools.img2img_strength if request.kind == "img2img" else 1.0
        strength = default if request.strength is None else float(request.strength)
    out_w, out_h = (width, height) if hires is None else scaled_size(width, height, hires.scale)
    max_side = scaled(MAX_OUTPUT_SIDE, spec.size_scale)
    max_pixels = round(MAX_OUTPUT_PIXELS * spec.size_scale**2)
    if out_w > max_side or out_h > max_side or out_w * out_h > max_pixels:
        raise UserError("image_too_large", width=out_w, height=out_h, pixels=max_pixels, side=max_side)
    return width, height, strength, hires


def normalize_request(request: GenerationRequest) -> GenerationRequest:
    """Every text of the request as it is stored and given to the model (see bot.prompts.policy)."""
    c = request.choices
    choices = replace(
        c,
        prompt=normalize_text(c.prompt),
        negative=normalize_text(c.negative),
        quality=normalize_optional(c.quality),
        year=normalize_optional(c.year),
        rating=normalize_optional(c.rating),
        artist=normalize_optional(c.artist),
        character=normalize_optional(c.character),
    )
    return replace(
        request,
        model=normalize_text(request.model),
        choices=choices,
        aspect=normalize_optional(request.aspect),
        size=normalize_optional(request.size),
        sampler=normalize_optional(request.sampler),
        lora=normalize_optional(request.lora),
    )


def _check_lengths(request: GenerationRequest) -> None:
    c = request.choices
    if len(c.prompt) > MAX_PROMPT_LENGTH:
        raise UserError("prompt_too_long", length=len(c.prompt), limit=MAX_PROMPT_LENGTH)
    limits: tuple[tuple[str, str | None, int], ...] = (
        ("negative", c.negative, MAX_PROMPT_LENGTH),
        ("artist", c.artist, MAX_ARTIST_FIELD),
        ("character", c.character, MAX_ARTIST_FIELD),
        ("quality", c.quality, MAX_OPTION_LENGTH),
        ("year", c.year, MAX_OPTION_LENGTH),
        ("rating", c.rating, MAX_OPTION_LENGTH),
        ("aspect", request.aspect, MAX_OPTION_LENGTH),
        ("size", request.size, MAX_OPTION_LENGTH),
        ("sampler", request.sampler, MAX_OPTION_LENGTH),
        ("lora", request.lora, MAX_LORA_FIELD),
        ("model", request.model, MAX_OPTION_LENGTH),
    )
    for name, value, limit in limits:
        if value is not None and len(value) > limit:
            raise UserError("option_too_long", name=name, length=len(value), limit=limit)


def resolve_request(
    request: GenerationRequest,
    models: Mapping[str, ModelSpec],
    tags: TagLookup | None = None,
    banned_words: Sequence[str] = (),
    loras: LoraLibrary | None = None,
    *,
    max_loras: int = DEFAULT_MAX_LORAS,
    max_lora_weight: float = DEFAULT_MAX_WEIGHT,
) -> ResolvedRequest:
    """Check every field and turn the request into the exact parameters the backend will get, with the
    content policy's verdict (the one place it is decided). Every text is normalized first; the
    resolved request holds the normalized texts.

    LoRAs (the lora option and `<lora:name:w>` in the prompt) are found in `loras` (none: no LoRA exists). The
    resolved request holds them all in its lora option and the prompt without the tags, so a reroll asks for the
    same ones; their trigger words are added to the prompt the model and the content policy see.

    Raises UserError with a message key on bad input; nothing is changed anywhere."""
    request = normalize_request(request)
    _check_lengths(request)
    spec = models.get(request.model)
    if spec is None:
        raise UserError("unknown_model", value=request.model, options=", ".join(models))
    dialect = load_dialect(spec.dialect)

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
    width, height, strength, hires = resolve_tools(request, spec, dialect)

    prompt_text, asks = extract_prompt_loras(request.choices.prompt)
    chosen = resolve_loras(
        [*parse_lora_option(request.lora), *asks],
        loras or LoraLibrary(),
        spec.family,
        dialect.name,
        max_loras=max_loras,
        max_weight=max_lora_weight,
        nsfw_allowed=request.nsfw_allowed,
    )
    request = replace(request, choices=replace(request.choices, prompt=prompt_text), lora=lora_option(chosen))
    # What the model and the policy read: the prompt with the LoRAs' trigger words.
    model_choices = replace(request.choices, prompt=with_triggers(prompt_text, chosen)) if chosen else request.choices

    policy = content_policy()
    fields = PolicyFields.of(model_choices)
    sfw = policy.sfw_negative(fields, request.nsfw_allowed, asked=request.choices.sfw)
    request = replace(request, choices=replace(request.choices, sfw=sfw))
    model_choices = replace(model_choices, sfw=sfw)
    built = build_prompt(dialect, model_choices, tags)
    verdict = policy.judge(
        fields,
        built.prompt,
        nsfw_allowed=request.nsfw_allowed,
        sfw_negative=sfw,
        banned_words=banned_words,
        tags=tags,
    )
    # The negative follows the policy's reading (`rating:explicit` is nsfw too), not the builder's own.
    built = replace(built, negative_prompt=negative_prompt(dialect, model_choices, verdict.nsfw))

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
        loras=tuple(lora.stored() for lora in chosen),
        source=request.source,
        strength=strength,
        hires=hires,
    )
    return ResolvedRequest(request, spec, dialect, built, params, verdict)
