"""SDXL models (Animagine XL 3.1 / 4.0, other SDXL fine-tunes) through diffusers' StableDiffusionXLPipeline.

Loading accepts every source kind of inference.specs: the built-in tiny model, a diffusers directory, a
Hugging Face hub repository (or its local cache) and a single A1111/ComfyUI-style .safetensors checkpoint.

Prompts: a plain prompt (no A1111 weighting, at most 77 tokens) is handed to diffusers as a string, so the
output is exactly what diffusers gives. A prompt or negative prompt with `(tag:1.2)` / `(tag)` / `[tag]`
weighting, or longer than CLIP's 77-token window, is encoded with compel into prompt_embeds: compel
weights each token and encodes long prompts in 77-token chunks that are concatenated, as A1111 does.

Seeds: every image gets its own CPU torch.Generator seeded from its seed. diffusers draws the initial noise
(and Euler a's per-step noise) on the CPU from it and moves it to the device, so a seed gives the same
starting noise on CUDA, MPS and CPU machines, and image i of a batch depends only on seeds[i].

Memory modes (inference.memory, switched by set_memory_mode; the diffusers features in inference.offload):
    high      the pipeline on the device; VAE slicing (diffusers' SDXL pipeline decodes a batch at once otherwise).
    balanced  + VAE tiling (1024 px tiles, the VAE's sample_size) and the two CLIP encoders on the CPU except
              while they encode: an accelerate hook moves each to the device when it runs and the UNet's first
              forward sends them back (the compel path runs the same encoders, through the same hooks).
    low       diffusers' enable_model_cpu_offload(device=...): one component on the device at a time.
    minimal   diffusers' group offloading at leaf level (sequential offload; see inference.offload), VAE tiles
              of 512 px.
None of them changes the arithmetic: high, balanced and low give the same pixels for an image no larger than
one tile (minimal too: the hooks only move the same weights to the same device before each layer).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate.hooks import add_hook_to_module
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

from inference import compile as compiling
from inference.device import (
    DecodeOutOfMemory,
    device_budget,
    free_device_memory,
    is_out_of_memory,
    module_bytes,
    resolve_dtype,
)
from inference.img2img import Pass, PassProgress, plan_passes, resized_all, sdxl_img2img_schedule, sdxl_img2img_steps
from inference.lora_adapters import LoraAdapters
from inference.memory import Footprint, reference_footprint, resolve_mode
from inference.offload import (
    OffloadBefore,
    log_memory_mode,
    offload_text_encoders,
    remove_hooks,
    sequential_offload,
    set_vae_features,
    tiled_when_large,
)
from inference.prompt_weighting import has_weighting, parse_weighted, strip_weighting
from inference.samplers import make_scheduler, require_sampler
from inference.specs import (
    BuiltinSource,
    DirSource,
    HubSource,
    MemoryMode,
    ModelSpec,
    RuntimeOptions,
    SingleFileSource,
)
from inference.tiny.sdxl import TINY_SDXL_NAME, ensure_tiny_sdxl
from inference.types import (
    CancelToken,
    GenerationCancelled,
    GenerationParams,
    LoadProgressCallback,
    LoadStages,
    LoraFile,
    ModelLoadError,
    ProgressCallback,
    error_summary,
)
from inference.vae import decodes_without_upcast, describe_vae, load_vae

# The diffusers repository whose configs and tokenizers fit a plain SDXL checkpoint (every Animagine XL
# single file). Used for a SingleFileSource without `config` when the network must not be touched.
SDXL_BASE_CONFIG_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
_CONFIG_FILE_PATTERNS = ["*.json", "**/*.json", "*.txt", "**/*.txt", "*.model", "**/*.model"]

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SDXLConditioning:
    """Text conditioning built with compel, in the shapes StableDiffusionXLPipeline takes.

    prompt_embeds and negative_prompt_embeds have the same length: a multiple of 77 tokens.
    """

    prompt_embeds: torch.Tensor  # (1, tokens, width of text_encoder + width of text_encoder_2)
    pooled_prompt_embeds: torch.Tensor  # (1, projection width of text_encoder_2)
    negative_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.prompt_embeds.shape[1])


# StableDiffusionXLImg2ImgPipeline's components, all taken from the loaded text-to-image pipeline.
_IMG2IMG_COMPONENTS = (
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "unet",
    "scheduler",
    "image_encoder",
    "feature_extractor",
)


@dataclass
class _Run:
    """One generate call: what every pass of it shares."""

    params: GenerationParams
    text_args: dict[str, Any]
    passes: list[Pass]
    progress: PassProgress
    cancel: CancelToken | None
    loras: Sequence[LoraFile] = ()


class SDXLBackend:
    """A loaded SDXL pipeline. generate/offload/activate/unload are serialised by a lock."""

    def __init__(self, spec: ModelSpec, pipe: StableDiffusionXLPipeline, runtime: RuntimeOptions) -> None:
        self.spec = spec
        self.runtime = runtime
        self._pipe: StableDiffusionXLPipeline | None = pipe
        self._base_scheduler_config = pipe.scheduler.config
        self._schedulers: dict[str, Any] = {}
        self._footprint: Footprint | None = None  # measured once: the weights never change after the load
        self._on_device = False  # load_sdxl places the weights with set_memory_mode + activate
        self.memory_mode: MemoryMode = "high"
        self._lock = threading.RLock()
        self._img2img_pipe: StableDiffusionXLImg2ImgPipeline | None = None  # made at the first image-to-image job
        self.adapters = LoraAdapters(pipe)

    # -- the Backend protocol -------------------------------------------------------------------------

    def generate(
        self,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        source: Image.Image | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> list[Image.Image]:
        """One image per seed, in order, at params.output_size(). Activates the model first if it was offloaded.

        With `source`: image to image from it (resized to width x height). With params.hires: the images of the
        first pass upscaled and refined (see inference.img2img)."""
        if not params.seeds:
            return []
        require_sampler(params.sampler, "sdxl")
        passes = plan_passes(params, source is not None, sdxl_img2img_steps)
        with self._lock:
            if cancel is not None and cancel.cancelled:
                raise GenerationCancelled()
            pipe = self._require_pipe()
            if not self._on_device:
                self._place()
            with self.adapters.applied(loras):
                pipe.scheduler = self._scheduler(params.sampler)
                text_args = self._text_arguments(pipe, params.prompt, params.negative_prompt)
                run = _Run(params, text_args, passes, PassProgress(progress, passes), cancel, loras)
                return self._passes_from(run, 0, [source] if source is not None else [])

    def _passes_from(self, run: _Run, index: int, images: list[Image.Image]) -> list[Image.Image]:
        """Run pass `index` and the ones after it; `images`: the input of an image-to-image pass."""
        for number in range(index, len(run.passes)):
            if run.cancel is not None and run.cancel.cancelled:
                raise GenerationCancelled()
            images = self._run_pass(run, number, images)
        return images

    def _run_pass(self, run: _Run, index: int, images: list[Image.Image]) -> list[Image.Image]:
        """One pipeline call over every seed of the job (the lock is held). A decode that runs out of memory after
        the last step raises DecodeOutOfMemory whose resume decodes the kept latents and runs the passes left."""
        pipe = self._require_pipe()
        params, step = run.params, run.passes[index]
        runner: StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline = pipe
        arguments: dict[str, Any] = {"num_inference_steps": params.steps}
        if step.strength is None:
            arguments.update(width=step.width, height=step.height)
        else:
            runner = self._img2img(pipe)
            self._encoders_leave_before_the_vae_encodes(pipe)
            inputs = resized_all(images, step.width, step.height)
            arguments.update(
                image=inputs[0] if len(inputs) == 1 else inputs,
                strength=step.strength,
                num_inference_steps=sdxl_img2img_schedule(params.steps, step.strength),
            )
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in params.seeds]
        run.progress.start(index)
        cancel = run.cancel
        interrupted = False
        final: list[torch.Tensor] = []  # the latents after the last step, kept on the CPU (a few hundred KB)

        def on_step_end(pipeline: Any, number: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            nonlocal interrupted
            total = int(getattr(pipeline, "_num_timesteps", step.steps) or step.steps)
            run.progress.step(number + 1, total)
            if number + 1 >= total:
                final[:] = [tensors["latents"].detach().to("cpu", copy=True)]
            if cancel is not None and cancel.cancelled:
                # diffusers skips the remaining steps once _interrupt is set (it still decodes latents).
                pipeline._interrupt = True
                interrupted = True
            return {}

        vae_dtype = pipe.vae.dtype
        decode_failed: str | None = None
        with self._tiled(pipe, step.width, step.height, step.img2img):
            try:
                result = runner(
                    **run.text_args,
                    **arguments,
                    guidance_scale=params.cfg,
                    num_images_per_prompt=params.count,
                    generator=generators,
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="pil",
                )
            except Exception as e:
                if interrupted or not final or not is_out_of_memory(e):
                    raise
                decode_failed = error_summary(e)  # every step done: only the decode ran out of memory
            finally:
                runner._interrupt = False
                # diffusers upcasts an fp16 VAE to fp32 for decoding (and encoding) and casts it back only when
                # that succeeds: after an error there (an out-of-memory at a large size) every later decode
                # would fail on fp16 latents meeting fp32 weights.
                if pipe.vae.dtype != vae_dtype:
                    pipe.vae.to(dtype=vae_dtype)
        if decode_failed is not None:  # raised here, not in the except clause: no traceback keeps the call
            resume = functools.partial(self._resume, run, index, final[0])
            raise DecodeOutOfMemory(decode_failed, resume)
        if runner is not pipe:
            # Low mode: the model-offload hooks belong to the text-to-image pipeline, which sends every model
            # back to the CPU after its calls; the image-to-image pipeline shares them but has no list of them.
            pipe.maybe_free_model_hooks()
        if interrupted:
            raise GenerationCancelled()
        made: list[Image.Image] = list(result.images)
        return made

    def _img2img(self, pipe: StableDiffusionXLPipeline) -> StableDiffusionXLImg2ImgPipeline:
        """diffusers' SDXL image-to-image pipeline over the loaded components (the same modules: no second copy
        of the weights, and the memory mode's hooks on them apply to it), made once per load."""
        if self._img2img_pipe is None:
            components = {name: getattr(pipe, name) for name in _IMG2IMG_COMPONENTS}
            force_zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
            img2img = StableDiffusionXLImg2ImgPipeline(
                **components,
                requires_aesthetics_score=False,  # SDXL base and its fine-tunes (the refiner sets it)
                force_zeros_for_empty_prompt=force_zeros,
                add_watermarker=getattr(pipe, "watermark", None) is not None,
            )
            img2img.set_progress_bar_config(disable=True)
            self._img2img_pipe = img2img
        self._img2img_pipe.scheduler = pipe.scheduler
        return self._img2img_pipe

    def _encoders_leave_before_the_vae_encodes(self, pipe: StableDiffusionXLPipeline) -> None:
        """Low mode: diffusers' model-offload chain (text_encoder -> text_encoder_2 -> unet -> vae) keeps
        text_encoder_2 on the device until the UNet runs, and image to image encodes its source in between: a
        hook on the VAE's encoder sends the text encoders back first. diffusers renews every hook after each call
        (maybe_free_model_hooks), which takes this one off with the rest; it is hung again for the next call."""
        if self.memory_mode != "low" or isinstance(getattr(pipe.vae.encoder, "_hf_hook", None), OffloadBefore):
            return
        encoders = (pipe.text_encoder, pipe.text_encoder_2)
        hooks = [hook for hook in pipe._all_hooks if any(hook.model is encoder for encoder in encoders)]
        add_hook_to_module(pipe.vae.encoder, OffloadBefore(hooks), append=True)

    def _tiled(self, pipe: StableDiffusionXLPipeline, width: int, height: int, img2img: bool) -> Any:
        if not img2img:
            return contextlib.nullcontext(False)
        return tiled_when_large(pipe.vae, self.footprint(), self.memory_mode, int(pipe.vae_scale_factor), width, height)

    def _resume(self, run: _Run, index: int, latents: torch.Tensor) -> list[Image.Image]:
        """After a decode that ran out of memory: decode pass `index`'s kept latents in the mode in effect now,
        then run the passes after it."""
        with self._lock:
            step = run.passes[index]
            pipe = self._require_pipe()
            with self._tiled(pipe, step.width, step.height, step.img2img):
                images = self._decode_kept(latents)
            if index + 1 == len(run.passes):
                return images
            with self.adapters.applied(run.loras):  # the passes left run with the job's LoRAs, as the first did
                return self._passes_from(run, index + 1, images)

    def _decode_kept(self, latents: torch.Tensor) -> list[Image.Image]:
        """Decode latents kept from a call whose decode ran out of memory, in the mode in effect now: what
        StableDiffusionXLPipeline.__call__ does after its last step (same upcast, same scaling, same
        postprocessing), so the images are the ones that call would have made."""
        with self._lock:
            pipe = self._require_pipe()
            if not self._on_device:
                self._place()
            vae_dtype = pipe.vae.dtype
            try:
                with torch.no_grad():
                    image = _decode_like_diffusers(pipe, latents.to(pipe._execution_device))
                    if getattr(pipe, "watermark", None) is not None:
                        image = pipe.watermark.apply_watermark(image)
                    images: list[Image.Image] = list(pipe.image_processor.postprocess(image, output_type="pil"))
            finally:
                if pipe.vae.dtype != vae_dtype:
                    pipe.vae.to(dtype=vae_dtype)
                pipe.maybe_free_model_hooks()  # low mode: every model back to the CPU, as after a call
            return images

    def footprint(self) -> Footprint:
        """Measured weights; a half-precision VAE that diffusers decodes without the fp32 upcast (an fp16-fix
        VAE, force_upcast false) decodes in 2-byte floats, with a smaller working set than the fp32 reference.

        Measured at the first call (the load places the model with it) and kept: the pre-flight check calls it
        from the event loop for every request, and during a decode diffusers holds the VAE in fp32."""
        pipe = self._require_pipe()
        if self._footprint is None:
            reference = reference_footprint(self.spec)
            vae = pipe.vae
            if vae.dtype in (torch.float16, torch.bfloat16) and decodes_without_upcast(vae):
                reference = reference.decoding_at(2)
            self._footprint = reference.with_weights(
                denoiser=module_bytes(pipe.unet),
                text_encoders=module_bytes(pipe.text_encoder, pipe.text_encoder_2),
                vae=module_bytes(vae),
            )
        return self._footprint

    def set_memory_mode(self, mode: MemoryMode) -> None:
        """Switch the diffusers features of `mode` on (and those of the previous mode off). Idempotent. A parked
        model (offload) only records the mode: activate applies it."""
        with self._lock:
            self._require_pipe()
            self.memory_mode = mode
            if self._on_device:
                self._place()

    def offload(self) -> None:
        """Move the weights to CPU RAM (keeping their dtype) and give the accelerator memory back. Every
        offload hook is removed; activate puts the memory mode back."""
        with self._lock:
            pipe = self._require_pipe()
            self._remove_hooks()
            if self.runtime.device != "cpu":
                pipe.to("cpu")
                free_device_memory(self.runtime.device)
            self._on_device = False

    def activate(self) -> None:
        with self._lock:
            self._require_pipe()
            if not self._on_device:
                self._place()

    def _place(self) -> None:
        """Put the weights where self.memory_mode wants them (the lock is held). Hooks of an earlier mode are
        removed first (remove_all_hooks also puts sequentially offloaded weights back on the CPU)."""
        pipe = self._require_pipe()
        device, mode = self.runtime.device, self.memory_mode
        self._remove_hooks()
        set_vae_features(pipe.vae, self.footprint(), mode, int(pipe.vae_scale_factor))
        if mode == "high":
            pipe.to(device)
        elif mode == "balanced":
            for name in ("unet", "vae"):
                getattr(pipe, name).to(device)
            encoders = [pipe.text_encoder, pipe.text_encoder_2]
            offload_text_encoders(encoders, pipe.unet, device, also_before=[pipe.vae.encoder])
            free_device_memory(device)
        elif mode == "low":
            pipe.enable_model_cpu_offload(device=device)
        else:
            sequential_offload(_modules(pipe), device, streamed=pipe.unet)
            free_device_memory(device)
        self._on_device = True

    def _remove_hooks(self) -> None:
        pipe = self._require_pipe()
        pipe.remove_all_hooks()  # accelerate's (model offload, balanced) and pipe._all_hooks
        remove_hooks(_modules(pipe))  # group offloading's

    def unload(self) -> None:
        with self._lock:
            if self._pipe is not None:
                self._remove_hooks()
            self._pipe = None
            self._schedulers.clear()
            self._img2img_pipe = None
            self._on_device = False
            free_device_memory(self.runtime.device)

    # -- prompts -------------------------------------------------------------------------------------

    def needs_compel(self, prompt: str, negative_prompt: str) -> bool:
        """True when a prompt uses A1111 weighting or does not fit CLIP's 77-token window."""
        pipe = self._require_pipe()
        texts = (prompt, negative_prompt)
        return any(has_weighting(text) or _too_long(pipe, strip_weighting(text)) for text in texts)

    def encode_with_compel(self, prompt: str, negative_prompt: str) -> SDXLConditioning:
        """Weighted, unlimited-length conditioning for a prompt pair (A1111 syntax), built with compel."""
        with self._lock:
            return _compel_conditioning(self._require_pipe(), prompt, negative_prompt)

    # -- internals -----------------------------------------------------------------------------------

    @property
    def pipeline(self) -> StableDiffusionXLPipeline:
        """The diffusers pipeline (for tests and tools). Raises once the model is unloaded."""
        return self._require_pipe()

    def _require_pipe(self) -> StableDiffusionXLPipeline:
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name!r} has been unloaded")
        return self._pipe

    def _scheduler(self, sampler_id: str) -> Any:
        scheduler = self._schedulers.get(sampler_id)
        if scheduler is None:
            scheduler = make_scheduler(sampler_id, self._base_scheduler_config)
            self._schedulers[sampler_id] = scheduler
        return scheduler

    def _text_arguments(self, pipe: StableDiffusionXLPipeline, prompt: str, negative: str) -> dict[str, Any]:
        if self.needs_compel(prompt, negative):
            cond = _compel_conditioning(pipe, prompt, negative)
            return {
                "prompt_embeds": cond.prompt_embeds,
                "pooled_prompt_embeds": cond.pooled_prompt_embeds,
                "negative_prompt_embeds": cond.negative_prompt_embeds,
                "negative_pooled_prompt_embeds": cond.negative_pooled_prompt_embeds,
            }
        # Escapes such as `honkai \(series\)` are resolved; text without them is passed unchanged.
        # An empty negative prompt is None, diffusers' default: SDXL then uses all-zero negative conditioning
        # (force_zeros_for_empty_prompt), as the model was trained.
        plain_negative = strip_weighting(negative)
        return {"prompt": strip_weighting(prompt), "negative_prompt": plain_negative or None}


def _decode_like_diffusers(pipe: StableDiffusionXLPipeline, latents: torch.Tensor) -> torch.Tensor:
    """The VAE decode of StableDiffusionXLPipeline.__call__ (diffusers 0.42), for latents after the last step."""
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    if vae.dtype == torch.float16 and vae.config.force_upcast:
        vae.to(dtype=torch.float32)  # what the pipeline's (deprecated) upcast_vae does
        latents = latents.to(next(iter(pipe.vae.post_quant_conv.parameters())).dtype)
    config = pipe.vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor
    latents = latents.to(get_module_execution_device(pipe.vae))
    image: torch.Tensor = pipe.vae.decode(latents, return_dict=False)[0]
    return image


def _modules(pipe: StableDiffusionXLPipeline) -> list[torch.nn.Module]:
    return [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]


# -- prompt helpers -----------------------------------------------------------------------------------


def _too_long(pipe: StableDiffusionXLPipeline, text: str) -> bool:
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
        if tokenizer is None:
            continue
        ids = tokenizer(text, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
        if len(ids) > tokenizer.model_max_length:
            return True
    return False


def _compel_conditioning(pipe: StableDiffusionXLPipeline, prompt: str, negative: str) -> SDXLConditioning:
    """Encode with compel the way CompelForSDXL configures it, but from our parsed fragments.

    We give compel its parsed form (FlattenedPrompt of Fragments) instead of compel-syntax text:
    compel's parser keeps the backslash of escaped `\\,` `\\.` `\\+` `\\-` `\\=` in the text it encodes and
    reads an unescaped `+`/`-` after a word as a weight, so no escaping of A1111 text into compel syntax
    is lossless. The pooled embedding is computed from the plain text (weights dropped, escapes resolved,
    first 77 tokens), which is what diffusers would pool for that text; compel's own wrapper would pool
    the compel-syntax string instead.
    """
    from compel import Compel, ReturnedEmbeddingsType
    from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

    dtype = pipe.text_encoder_2.dtype
    # Where the pipeline computes: in the offload modes the encoders wait on the CPU (or as meta tensors) and
    # their hooks move them, and their inputs, to this device when they run.
    device = pipe._execution_device

    def make(tokenizer: Any, encoder: Any) -> Compel:
        return Compel(
            tokenizer=tokenizer,
            text_encoder=encoder,
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            truncate_long_prompts=False,
            dtype_for_device_getter=lambda _device: dtype,
            device=str(device),
        )

    encoders = [make(pipe.tokenizer, pipe.text_encoder), make(pipe.tokenizer_2, pipe.text_encoder_2)]

    def conjunction(text: str) -> Any:
        fragments = [Fragment(piece, weight) for piece, weight in parse_weighted(text)]
        return Conjunction([FlattenedPrompt(fragments)])

    def encode_pair(compel: Compel, texts: list[str]) -> list[torch.Tensor]:
        return [compel.build_conditioning_tensor_for_conjunction(conjunction(t))[0] for t in texts]

    zero_negative = not negative and bool(pipe.config.get("force_zeros_for_empty_prompt", False))
    texts = [prompt] if zero_negative else [prompt, negative]
    with torch.no_grad():
        per_encoder = [encode_pair(compel, texts) for compel in encoders]
        length = max(t.shape[1] for tensors in per_encoder for t in tensors)
        per_encoder = [
            [_pad_tokens(compel, t, length) for t in tensors]
            for compel, tensors in zip(encoders, per_encoder, strict=True)
        ]
        embeds = [
            torch.cat([left, right], dim=-1).to(device=device, dtype=dtype)
            for left, right in zip(per_encoder[0], per_encoder[1], strict=True)
        ]
        pooler = encoders[1].conditioning_provider
        pooled = [pooler.get_pooled_embeddings([strip_weighting(t)]) for t in texts]
        pooled = [p.to(device=device, dtype=dtype) for p in pooled]
    if zero_negative:
        embeds.append(torch.zeros_like(embeds[0]))
        pooled.append(torch.zeros_like(pooled[0]))
    return SDXLConditioning(
        prompt_embeds=embeds[0],
        pooled_prompt_embeds=pooled[0],
        negative_prompt_embeds=embeds[1],
        negative_pooled_prompt_embeds=pooled[1],
    )


def _pad_tokens(compel: Any, embeds: torch.Tensor, length: int) -> torch.Tensor:
    """Extend conditioning to `length` tokens with 77-token chunks of the empty prompt (as compel pads)."""
    missing = length - embeds.shape[1]
    if missing <= 0:
        return embeds
    empty = compel.build_conditioning_tensor("")
    chunks = -(-missing // empty.shape[1])
    padding = empty.to(embeds.dtype).repeat(embeds.shape[0], chunks, 1)[:, :missing]
    return torch.cat([embeds, padding], dim=1)


# -- loading ------------------------------------------------------------------------------------------


def load_sdxl(spec: ModelSpec, runtime: RuntimeOptions, on_progress: LoadProgressCallback | None = None) -> SDXLBackend:
    """Load an SDXL model from any source kind and move it to runtime.device.

    Every failure (missing or corrupt files, a repository not in the cache, out of memory on the
    device...) is raised as ModelLoadError with a short message that names the source.
    """
    if spec.family != "sdxl":
        raise ModelLoadError(f"model {spec.name!r} is a {spec.family} model, not SDXL")
    try:
        dtype = resolve_dtype(runtime.dtype, runtime.device, "sdxl")
    except KeyError as exc:
        raise ModelLoadError(f"model {spec.name!r}: unknown dtype {runtime.dtype!r}") from exc
    source = spec.source
    stages = LoadStages(on_progress, 3)
    stages("locating")
    if isinstance(source, BuiltinSource):
        if source.name != TINY_SDXL_NAME:
            raise ModelLoadError(f"model {spec.name!r}: {source.name!r} is not a built-in SDXL model")
        what = f"built-in model {source.name!r}"
        path = _attempt(what, lambda: ensure_tiny_sdxl(runtime.cache_dir))
        stages("reading weights")
        pipe = _load_directory(path, dtype, what)
    elif isinstance(source, DirSource):
        what = f"model directory {source.path}"
        stages("reading weights")
        pipe = _load_directory(Path(source.path), dtype, what)
    elif isinstance(source, HubSource):
        revision = f"@{source.revision}" if source.revision else ""
        where = "the local Hugging Face cache" if runtime.local_files_only else "the Hugging Face hub"
        what = f"hub model {source.repo_id}{revision} (from {where})"
        stages("reading weights")
        pipe = _attempt(
            what,
            lambda: StableDiffusionXLPipeline.from_pretrained(
                source.repo_id,
                revision=source.revision,
                variant=source.variant,
                dtype=dtype,
                local_files_only=runtime.local_files_only,
            ),
        )
    elif isinstance(source, SingleFileSource):
        what = f"checkpoint file {source.path}"
        path = Path(source.path)
        if not path.is_file():
            raise ModelLoadError(f"{what} does not exist")
        config = _single_file_config(source.config, runtime.local_files_only, what)
        stages("reading weights")
        pipe = _attempt(
            what,
            lambda: StableDiffusionXLPipeline.from_single_file(
                str(path), config=config, dtype=dtype, local_files_only=runtime.local_files_only
            ),
        )
    else:
        raise ModelLoadError(f"model {spec.name!r}: {type(source).__name__} cannot hold an SDXL model")

    if spec.vae is not None:
        vae_source = spec.vae
        vae = load_vae(vae_source, pipe.vae.dtype, pipe.vae, runtime.local_files_only)
        pipe.register_modules(vae=vae)
        upcast = "decodes in fp32" if not decodes_without_upcast(vae) else "decodes without the fp32 upcast"
        log.info("model %s: %s replaces its VAE (%s)", spec.name, describe_vae(vae_source), upcast)

    stages(f"moving to {runtime.device}")
    pipe.set_progress_bar_config(disable=True)
    backend = SDXLBackend(spec, pipe, runtime)
    mode = resolve_mode(spec.memory, device_budget(runtime), backend.footprint())
    log_memory_mode(spec, mode, runtime)
    _attempt(f"{what} on {runtime.device}", lambda: backend.set_memory_mode(mode))
    _attempt(f"{what} on {runtime.device}", backend.activate)
    if spec.compile and compiling.should_compile(spec.name, runtime.device):
        _attempt(f"compiling {what}", lambda: compile_and_warm_up(backend))
    stages.finish()
    return backend


def compile_and_warm_up(backend: SDXLBackend) -> None:
    """channels_last for the UNet and VAE (CUDA), torch.compile of the UNet, then one short generation at the
    model's typical size so the compilation happens now rather than in the first user's job."""
    pipe = backend.pipeline
    if backend.runtime.device.startswith("cuda"):
        compiling.use_channels_last(pipe.unet, pipe.vae)
    compiling.compile_module(pipe.unet)
    edge = backend.footprint().typical_px
    started = time.monotonic()
    backend.generate(GenerationParams("", "", edge, edge, 2, 5.0, (0,), "euler_a"))
    log.info("model %s: compiled and warmed up in %.1f s", backend.spec.name, time.monotonic() - started)


def _load_directory(path: Path, dtype: torch.dtype, what: str) -> StableDiffusionXLPipeline:
    if not path.is_dir():
        raise ModelLoadError(f"{what} does not exist")
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{what} has no model_index.json (not a diffusers-format model)")
    return _attempt(
        what,
        lambda: StableDiffusionXLPipeline.from_pretrained(str(path), dtype=dtype, local_files_only=True),
    )


def _single_file_config(config: str | None, local_files_only: bool, what: str) -> str | None:
    """The `config` to hand from_single_file.

    A local directory must hold model_index.json. With local_files_only, a hub id (or None, meaning the
    SDXL base configs) is resolved in the local HF cache here: when the cache lacks it, diffusers'
    from_single_file would otherwise retry the download with local_files_only=False.
    """
    if config is not None and Path(config).expanduser().is_dir():
        directory = Path(config).expanduser()
        if not (directory / "model_index.json").is_file():
            raise ModelLoadError(f"{what}: config directory {config} has no model_index.json")
        return str(directory)
    if config is not None and (config.startswith((".", "/", "~")) or config.count("/") > 1):
        raise ModelLoadError(f"{what}: config directory {config} does not exist")
    if not local_files_only:
        return config  # a hub id, or None: diffusers infers the configs from the checkpoint's keys
    repo_id = config or SDXL_BASE_CONFIG_REPO
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(repo_id, allow_patterns=_CONFIG_FILE_PATTERNS, local_files_only=True))
    except Exception as exc:
        raise ModelLoadError(
            f"{what}: the configs of {repo_id} are not in the local Hugging Face cache ({error_summary(exc)})"
        ) from exc


def _attempt(what: str, action: Callable[[], T]) -> T:
    try:
        return action()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load {what}: {error_summary(exc)}") from exc
