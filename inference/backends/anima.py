"""Anima (Cosmos-Predict2 DiT + LLM adapter + Qwen3 text encoder) through diffusers' AnimaModularPipeline.

The pipeline runs diffusers' own AnimaAutoBlocks with these changes, made the modular way:
  * two leaf blocks in the denoising loop (first and last in each step) that report per-step progress and
    stop between steps when the CancelToken is set;
  * prompt weights `(tag:1.2)` as ComfyUI applies them to Anima (docs/fidelity.md): the text-encoder and
    text-conditioning blocks are subclasses that multiply the LLM adapter's output row of each T5 token by
    its weight; the Qwen3 states are not weighted. Prompts without weight syntax take diffusers' code;
  * the denoising loop keeps the latents (and the guided prediction) in float32 with a bf16 model, as
    ComfyUI does.

Each seed is a separate pipeline call with its own CPU generator: image i depends only on seeds[i] and a
reroll of one seed reproduces it exactly (a batched call would give slightly different numbers per batch size).

Memory modes (inference.memory; the features in inference.offload). The modular pipeline has no
enable_model_cpu_offload, and ComponentsManager.enable_auto_cpu_offload decides from torch.cuda.mem_get_info (it
fails on the CPU and moves models by a free-memory guess), so the backend hangs the same accelerate hooks
DiffusionPipeline.enable_model_cpu_offload hangs, on the components in the order the blocks run them:
    high      everything on the device; VAE slicing.
    balanced  + VAE tiling (256 px tiles, the Qwen-Image VAE's own) and Qwen3 on the CPU except while it encodes:
              its cpu_offload_with_hook moves it to the device when the text-encoder step calls it, and a hook on
              the LLM adapter (text_conditioner, the first model the denoise blocks run) sends it back. The blocks
              stay diffusers' own (no extra block to keep in step with the text-encoder step), and the
              pipeline's _execution_device reads the device from Qwen3's hook, so latents are made on the GPU.
    low       cpu_offload_with_hook chained text_encoder -> text_conditioner -> transformer -> vae (one model on
              the device at a time); after each call every model goes back to the CPU, as
              DiffusionPipeline.maybe_free_model_hooks does.
    minimal   diffusers' leaf-level group offloading on every component (ModelMixin and the transformers Qwen3
              alike): one layer's weights on the device at a time.
None of them changes the arithmetic: the same weights run on the same device, so images are identical.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.hooks import UserCpuOffloadHook, add_hook_to_module
from diffusers import AnimaAutoBlocks, AnimaModularPipeline
from diffusers.modular_pipelines import BlockState, ModularPipelineBlocks, PipelineState
from diffusers.modular_pipelines.anima.before_denoise import AnimaTextConditioningStep
from diffusers.modular_pipelines.anima.denoise import AnimaLoopDenoiser
from diffusers.modular_pipelines.anima.encoders import AnimaTextEncoderStep
from diffusers.modular_pipelines.modular_pipeline_utils import InputParam, OutputParam
from PIL import Image

from inference import compile as compiling
from inference import torchvision_shim
from inference.backends import anima_comfyui
from inference.device import device_budget, free_device_memory, module_bytes, resolve_dtype
from inference.img2img import Pass, PassProgress, anima_img2img_steps, plan_passes, resized
from inference.lora_adapters import LoraAdapters
from inference.memory import Footprint, reference_footprint, resolve_mode
from inference.offload import (
    OffloadBefore,
    log_memory_mode,
    model_offload,
    offload_all,
    offload_text_encoders,
    remove_hooks,
    sequential_offload,
    set_vae_features,
    tiled_when_large,
)
from inference.prompt_weighting import parse_weighted
from inference.samplers import make_scheduler, require_sampler
from inference.specs import (
    BuiltinSource,
    ComfyUISource,
    DirSource,
    HubSource,
    MemoryMode,
    ModelSpec,
    RuntimeOptions,
    SingleFileSource,
)
from inference.tiny.anima import TINY_ANIMA_NAME, ensure_tiny_anima
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

log = logging.getLogger(__name__)

# Every component the text-to-image workflow needs (the guider is created from its config, never loaded).
REQUIRED_COMPONENTS = (
    "text_encoder",
    "tokenizer",
    "t5_tokenizer",
    "text_conditioner",
    "transformer",
    "vae",
    "scheduler",
)
STEP_HOOK_INPUT = "animebot_step_hook"
T5_WEIGHTS = "t5_weights"  # text encoder -> text conditioning: a weight per T5 token (None: unweighted)
NEGATIVE_T5_WEIGHTS = "negative_t5_weights"
# The order the blocks run the models in (low mode's offload chain).
OFFLOAD_ORDER = ("text_encoder", "text_conditioner", "transformer", "vae")

Fragments = list[tuple[str, float]]


# ------------------------------------------------------------------------------------ progress/cancel


class _StepHook:
    """Per-`generate` state shared by the two loop blocks: progress across all seeds and passes, and
    cancellation."""

    def __init__(self, progress: PassProgress, cancel: CancelToken | None) -> None:
        self.progress = progress
        self.cancel = cancel

    def check(self) -> None:
        if self.cancel is not None and self.cancel.cancelled:
            _quiet_cancellation.active = True  # the blocks re-raise and log at every nesting level
            raise GenerationCancelled()

    def before_step(self) -> None:
        self.check()

    def after_step(self, i: int, steps: int) -> None:
        self.progress.step(i + 1, steps)  # `steps`: what this pass runs (image to image: steps x strength)
        self.check()


class _QuietCancellation(threading.local):
    active = False


_quiet_cancellation = _QuietCancellation()


class _DropCancellationErrors(logging.Filter):
    """diffusers logs an ERROR with a traceback at each block level an exception passes through; a
    cancellation is not an error, so drop those records in the thread that is cancelling."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _quiet_cancellation.active


_filter_lock = threading.Lock()
_filter_installed = False


def _install_log_filter() -> None:
    global _filter_installed
    with _filter_lock:
        if not _filter_installed:
            logging.getLogger("diffusers.modular_pipelines.modular_pipeline").addFilter(_DropCancellationErrors())
            _filter_installed = True


def _hook_input() -> InputParam:
    return InputParam(STEP_HOOK_INPUT, description="animebot: progress and cancellation between steps")


class _StepHookBlock(ModularPipelineBlocks):
    """A loop block that hands each denoising step to the _StepHook passed in as a pipeline input."""

    model_name = "anima"
    summary = ""

    @property
    def description(self) -> str:
        return f"animebot: {self.summary}"

    @property
    def inputs(self) -> list[InputParam]:
        return [_hook_input()]

    def __call__(self, components: Any, block_state: BlockState, i: int, t: torch.Tensor) -> tuple[Any, BlockState]:
        hook = getattr(block_state, STEP_HOOK_INPUT, None)
        if hook is not None:
            self.step(hook, i, block_state)
        return components, block_state

    def step(self, hook: _StepHook, i: int, block_state: BlockState) -> None:
        raise NotImplementedError


class StepStartBlock(_StepHookBlock):
    """First block of every denoising step: starts the clock, stops if cancelled."""

    summary = "check for cancellation before each denoising step"

    def step(self, hook: _StepHook, i: int, block_state: BlockState) -> None:
        hook.before_step()


class StepEndBlock(_StepHookBlock):
    """Last block of every denoising step: reports StepProgress, stops if cancelled."""

    summary = "report progress and check for cancellation after each denoising step"

    def step(self, hook: _StepHook, i: int, block_state: BlockState) -> None:
        hook.after_step(i, int(getattr(block_state, "num_inference_steps")))  # noqa: B009


# -------------------------------------------------------------------------------------- prompt weights


def weighted_fragments(text: Any) -> Fragments | None:
    """`text`'s (piece, weight) fragments when it carries A1111/ComfyUI weights, else None (plain text,
    an empty prompt, or not a string: those go through diffusers' own code unchanged)."""
    if not isinstance(text, str) or not text:
        return None
    fragments = parse_weighted(text)
    if len(fragments) == 1 and fragments[0] == (text, 1.0):
        return None
    return fragments


def comfyui_tokens(tokenizer: Any, fragments: Fragments, end_token: int | None) -> tuple[list[int], list[float]]:
    """Token ids and one weight per id, as ComfyUI's tokenize_with_weights builds them: every fragment is
    tokenized on its own (no special tokens) and its ids carry its weight; `end_token` (T5's EOS) closes the
    sequence with weight 1. A fragment of one piece gives exactly the ids of tokenizing the whole text."""
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in fragments:
        piece_ids = [int(i) for i in tokenizer(piece, add_special_tokens=False).input_ids]
        ids += piece_ids
        weights += [float(weight)] * len(piece_ids)
    if end_token is not None:
        ids.append(int(end_token))
        weights.append(1.0)
    return ids, weights


def _truncate(ids: list[int], weights: list[float], limit: int, keep_last: bool) -> tuple[list[int], list[float]]:
    """Cut to `limit` tokens as the tokenizer's truncation does (T5 keeps its EOS as the last token)."""
    if len(ids) <= limit:
        return ids, weights
    if keep_last and limit > 0:
        return ids[: limit - 1] + ids[-1:], weights[: limit - 1] + weights[-1:]
    return ids[:limit], weights[:limit]


class WeightedAnimaTextEncoderStep(AnimaTextEncoderStep):
    """AnimaTextEncoderStep that reads A1111/ComfyUI weights `(tag:1.2)`, the way ComfyUI weights Anima.

    ComfyUI (comfy/text_encoders/anima.py, comfy/ldm/anima/model.py) tokenizes each weighted fragment on
    its own for both tokenizers, forces the Qwen3 token weights to 1 (the Qwen3 hidden states are never
    weighted) and keeps one weight per T5 token; the LLM adapter's output row for each T5 token is then
    multiplied by that weight (WeightedAnimaTextConditioningStep). So this step outputs the unweighted Qwen3
    states of the fragment tokens, the T5 ids of the text without weight syntax, and `t5_weights`
    (1, T5 length), float32. Prompts without weight syntax take diffusers' own code (`t5_weights` None).
    """

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            *super().intermediate_outputs,
            OutputParam(T5_WEIGHTS, type_hint=torch.Tensor, description="animebot: a weight per T5 token, or None"),
            OutputParam(
                NEGATIVE_T5_WEIGHTS,
                type_hint=torch.Tensor,
                description="animebot: a weight per negative T5 token, or None",
            ),
        ]

    @staticmethod
    def encode_weighted(
        components: Any, fragments: Fragments, max_sequence_length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Qwen3 states, their mask, T5 ids, T5 mask, T5 weights) for one weighted prompt."""
        qwen_ids, _ = comfyui_tokens(components.tokenizer, fragments, None)
        qwen_ids, _ = _truncate(qwen_ids, [1.0] * len(qwen_ids), max_sequence_length, keep_last=False)
        t5_ids, t5_weights = comfyui_tokens(components.t5_tokenizer, fragments, components.t5_tokenizer.eos_token_id)
        t5_ids, t5_weights = _truncate(t5_ids, t5_weights, max_sequence_length, keep_last=True)

        if qwen_ids:
            input_ids = torch.tensor([qwen_ids], dtype=torch.long, device=device)
            qwen_mask = torch.ones_like(input_ids)
        else:  # as diffusers does for a prompt with no tokens
            input_ids = torch.zeros((1, 1), dtype=torch.long, device=device)
            qwen_mask = torch.zeros_like(input_ids)
        qwen = components.text_encoder(
            input_ids=input_ids, attention_mask=qwen_mask, output_hidden_states=False
        ).last_hidden_state
        qwen = qwen.to(dtype=dtype, device=device)
        qwen = qwen * qwen_mask.to(qwen).unsqueeze(-1)

        ids = torch.tensor([t5_ids], dtype=torch.long, device=device)
        weights = torch.tensor([t5_weights], dtype=torch.float32, device=device)
        return qwen, qwen_mask, ids, torch.ones_like(ids), weights

    @torch.no_grad()
    def __call__(self, components: Any, state: PipelineState) -> tuple[Any, PipelineState]:
        block_state: Any = self.get_block_state(state)
        self.check_inputs(block_state)
        device = components._execution_device
        dtype = components.text_encoder.dtype
        max_len = block_state.max_sequence_length
        with_negative = components.guider.num_conditions > 1
        prompt, negative = block_state.prompt, block_state.negative_prompt
        if negative is None:
            negative = ""
        pos = weighted_fragments(prompt)
        neg = weighted_fragments(negative) if with_negative and isinstance(prompt, str) else None

        if pos is None and neg is None:  # diffusers' own encoding, bit for bit
            outputs = self.encode_prompt(
                components=components,
                prompt=prompt,
                negative_prompt=block_state.negative_prompt,
                prepare_unconditional_embeds=with_negative,
                max_sequence_length=max_len,
                device=device,
                dtype=dtype,
            )
            for name, value in outputs.items():
                setattr(block_state, name, value)
            block_state.t5_weights = None
            block_state.negative_t5_weights = None
            self.set_block_state(state, block_state)
            return components, state

        def encode(text: str, fragments: Fragments | None) -> tuple[Any, ...]:
            if fragments is not None:
                return self.encode_weighted(components, fragments, max_len, device, dtype)
            qwen, qwen_mask = self._get_qwen_prompt_embeds(components, [text], max_len, device, dtype)
            t5_ids, t5_mask = self._get_t5_prompt_ids(components, [text], max_len, device)
            return qwen, qwen_mask, t5_ids, t5_mask, None

        assert isinstance(prompt, str)  # a list is never weighted
        (
            block_state.qwen_prompt_embeds,
            block_state.qwen_attention_mask,
            block_state.t5_input_ids,
            block_state.t5_attention_mask,
            block_state.t5_weights,
        ) = encode(prompt, pos)
        block_state.negative_qwen_prompt_embeds = None
        block_state.negative_qwen_attention_mask = None
        block_state.negative_t5_input_ids = None
        block_state.negative_t5_attention_mask = None
        block_state.negative_t5_weights = None
        if with_negative:
            if not isinstance(negative, str):
                raise TypeError(f"`negative_prompt` should be the same type to `prompt`, but got {type(negative)}")
            (
                block_state.negative_qwen_prompt_embeds,
                block_state.negative_qwen_attention_mask,
                block_state.negative_t5_input_ids,
                block_state.negative_t5_attention_mask,
                block_state.negative_t5_weights,
            ) = encode(negative, neg)
        self.set_block_state(state, block_state)
        return components, state


def apply_t5_weights(embeds: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The LLM adapter's output rows times their T5 token's weight (ComfyUI: `out * t5xxl_weights`, a float32
    product), cast to `dtype`. Rows past the T5 tokens are the adapter's zero padding and stay zero."""
    scale = torch.ones(embeds.shape[:2], dtype=torch.float32, device=embeds.device)
    tokens = weights.shape[-1]
    scale[:, :tokens] = weights.to(device=embeds.device, dtype=torch.float32)
    return (embeds.to(torch.float32) * scale.unsqueeze(-1)).to(dtype)


class WeightedAnimaTextConditioningStep(AnimaTextConditioningStep):
    """AnimaTextConditioningStep that multiplies each conditioner output row by its T5 token's weight
    (positive and negative prompt). Without weights it is diffusers' step unchanged."""

    @property
    def inputs(self) -> list[InputParam]:
        return [
            *super().inputs,
            InputParam(T5_WEIGHTS, type_hint=torch.Tensor, description="animebot: a weight per T5 token"),
            InputParam(NEGATIVE_T5_WEIGHTS, type_hint=torch.Tensor, description="animebot: negative T5 weights"),
        ]

    @staticmethod
    def _conditioned(
        components: Any,
        prefix: str,
        block_state: Any,
        device: torch.device,
        conditioning_dtype: torch.dtype,
        output_dtype: torch.dtype,
    ) -> torch.Tensor:
        inputs = {
            "qwen_prompt_embeds": getattr(block_state, f"{prefix}qwen_prompt_embeds"),
            "qwen_attention_mask": getattr(block_state, f"{prefix}qwen_attention_mask"),
            "t5_input_ids": getattr(block_state, f"{prefix}t5_input_ids"),
            "t5_attention_mask": getattr(block_state, f"{prefix}t5_attention_mask"),
        }
        weights = getattr(block_state, f"{prefix}t5_weights", None)
        if weights is None:
            return AnimaTextConditioningStep._condition_prompt_embeds(
                components, **inputs, device=device, conditioning_dtype=conditioning_dtype, output_dtype=output_dtype
            )
        # Same call as the parent's, weighted before the cast to the transformer's dtype.
        raw = AnimaTextConditioningStep._condition_prompt_embeds(
            components, **inputs, device=device, conditioning_dtype=conditioning_dtype, output_dtype=conditioning_dtype
        )
        return apply_t5_weights(raw, weights, output_dtype).to(device=device)

    @torch.no_grad()
    def __call__(self, components: Any, state: PipelineState) -> tuple[Any, PipelineState]:
        block_state: Any = self.get_block_state(state)
        if getattr(block_state, T5_WEIGHTS, None) is None and getattr(block_state, NEGATIVE_T5_WEIGHTS, None) is None:
            return super().__call__(components, state)
        device = components._execution_device
        conditioning_dtype = components.text_conditioner.dtype
        output_dtype = components.transformer.dtype
        block_state.prompt_embeds = self._conditioned(
            components, "", block_state, device, conditioning_dtype, output_dtype
        )
        block_state.negative_prompt_embeds = None
        if block_state.negative_qwen_prompt_embeds is not None:
            block_state.negative_prompt_embeds = self._conditioned(
                components, "negative_", block_state, device, conditioning_dtype, output_dtype
            )
        self.set_block_state(state, block_state)
        return components, state


# ------------------------------------------------------------------------------------- float32 latents


class Float32AnimaLoopDenoiser(AnimaLoopDenoiser):
    """AnimaLoopDenoiser with the transformer's predictions upcast to float32 before guidance, as ComfyUI
    does (`diffusion_model(...).float()`), so that a bf16 model keeps float32 latents between steps.

    diffusers prepares float32 latents, but FlowMatchEulerDiscreteScheduler.step casts its result to the
    prediction's dtype: with a bf16 prediction the latents became bf16 after the first step (and CFG was
    computed in bf16). With a float32 prediction, guidance, the step and the latents stay float32. With a
    float32 model `.float()` returns the same tensor: bit-identical to diffusers' block."""

    @torch.no_grad()
    def __call__(self, components: Any, block_state: BlockState, i: int, t: torch.Tensor) -> tuple[Any, BlockState]:
        state: Any = block_state
        components.guider.set_state(step=i, num_inference_steps=state.num_inference_steps, timestep=t)
        guider_state = components.guider.prepare_inputs_from_block_state(state, self._guider_input_fields)
        for batch in guider_state:
            components.guider.prepare_models(components.transformer)
            cond_kwargs = {key: getattr(batch, key).to(state.dtype) for key in self._guider_input_fields}
            batch.noise_pred = components.transformer(
                hidden_states=state.latent_model_input,
                timestep=state.timestep,
                padding_mask=state.padding_mask,
                return_dict=False,
                **cond_kwargs,
            )[0].float()
            components.guider.cleanup_models(components.transformer)
        state.noise_pred = components.guider(guider_state)[0]
        return components, block_state


# ------------------------------------------------------------------------------------------- blocks


def build_blocks() -> Any:
    """diffusers' AnimaAutoBlocks with our text-encoder and text-conditioning steps (ComfyUI's weighting),
    float32 latents between steps, and the two progress/cancellation blocks in the denoising loop."""
    blocks: Any = AnimaAutoBlocks()
    blocks.sub_blocks["text_encoder"] = WeightedAnimaTextEncoderStep()
    core = blocks.sub_blocks["denoise"]  # AutoPipelineBlocks: img2img / text2image
    for branch in core.sub_blocks.values():
        branch.sub_blocks["text_conditioning"] = WeightedAnimaTextConditioningStep()
        loop = branch.sub_blocks["denoise"]  # AnimaDenoiseStep (a LoopSequentialPipelineBlocks)
        loop.sub_blocks["denoiser"] = Float32AnimaLoopDenoiser(
            guider_input_fields={"encoder_hidden_states": ("prompt_embeds", "negative_prompt_embeds")}
        )
        loop.sub_blocks.insert("animebot_step_start", StepStartBlock(), 0)
        loop.sub_blocks["animebot_step_end"] = StepEndBlock()
        loop.set_progress_bar_config(disable=True)  # progress goes to our callback, not to stderr
    return blocks


# ------------------------------------------------------------------------------------------ backend


class AnimaBackend:
    """A loaded Anima pipeline (see inference.backends.base.Backend)."""

    def __init__(self, spec: ModelSpec, pipeline: Any, runtime: RuntimeOptions) -> None:
        self.spec = spec
        self.runtime = runtime
        self._pipe: Any = pipeline
        self._lock = threading.Lock()
        self._sampler: str | None = None
        self._footprint: Footprint | None = None  # measured once: the weights never change after the load
        self._on_device = False  # load_anima places the weights with set_memory_mode + activate
        self.memory_mode: MemoryMode = "high"
        self._chain: list[UserCpuOffloadHook] = []  # low mode's model-offload hooks
        self.adapters = LoraAdapters(pipeline)
        _install_log_filter()

    @property
    def pipeline(self) -> Any:
        """The AnimaModularPipeline (raises once unloaded)."""
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name!r} was unloaded")
        return self._pipe

    def _use_sampler(self, sampler_id: str) -> None:
        require_sampler(sampler_id, "anima")
        if sampler_id != self._sampler:
            pipe = self.pipeline
            pipe.update_components(scheduler=make_scheduler(sampler_id, pipe.scheduler.config))
            self._sampler = sampler_id

    def _use_cfg(self, cfg: float) -> None:
        pipe = self.pipeline
        if float(pipe.guider.config.guidance_scale) != float(cfg):
            # The documented way to change a guider parameter in a modular pipeline.
            pipe.update_components(guider=pipe.guider.new(guidance_scale=float(cfg)))

    def generate(
        self,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        source: Image.Image | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> list[Image.Image]:
        if not params.seeds:
            return []
        with self._lock:
            if not self._on_device:
                self._activate_locked()
            self._check_params(params)
            self._use_sampler(params.sampler)
            self._use_cfg(params.cfg)
            passes = plan_passes(params, source is not None, anima_img2img_steps)
            hook = _StepHook(PassProgress(progress, passes, len(params.seeds)), cancel)
            images: list[Image.Image] = []
            try:
                hook.check()
                with self.adapters.applied(loras):
                    for index, seed in enumerate(params.seeds):
                        images.append(self._one_image(params, passes, index, int(seed), source, hook))
                        offload_all(self._chain)  # low mode: every model back to the CPU between images
            finally:
                _quiet_cancellation.active = False
                offload_all(self._chain)
            return images

    def _one_image(
        self,
        params: GenerationParams,
        passes: list[Pass],
        index: int,
        seed: int,
        source: Image.Image | None,
        hook: _StepHook,
    ) -> Image.Image:
        """Image `index` of the job through every pass (the lock is held). Each pass draws from its own generator
        seeded with `seed`: the refine of a hires fix is exactly an upscale job of the first pass's image."""
        pipe = self.pipeline
        image = source
        for number, step in enumerate(passes):
            hook.check()  # a cancel during the last pass's decode: not even the next pass's VAE encode runs
            hook.progress.start(number, index)
            arguments: dict[str, Any] = {"height": step.height, "width": step.width}
            if step.strength is not None:
                assert image is not None  # plan_passes: an image-to-image pass has a source or a first pass
                # AnimaAutoBlocks takes its image-to-image branch (VAE encode, the schedule cut at strength)
                # when `image` is given; our blocks are in both branches (build_blocks).
                arguments.update(image=resized(image, step.width, step.height), strength=step.strength)
            with self._tiled(step):
                out = pipe(
                    prompt=params.prompt,
                    negative_prompt=params.negative_prompt,
                    num_inference_steps=params.steps,
                    generator=torch.Generator(device="cpu").manual_seed(seed),
                    output_type="pil",
                    output="images",
                    **arguments,
                    **{STEP_HOOK_INPUT: hook},
                )
            image = out[0]
        assert image is not None
        return image

    def _tiled(self, step: Pass) -> Any:
        if step.strength is None:
            return contextlib.nullcontext(False)
        pipe = self.pipeline
        footprint, mode, scale = self.footprint(), self.memory_mode, int(pipe.vae_scale_factor)
        return tiled_when_large(pipe.vae, footprint, mode, scale, step.width, step.height)

    def _check_params(self, params: GenerationParams) -> None:
        multiple = int(self.pipeline.vae_scale_factor) * 2  # VAE downscale x the DiT's 2x2 patches
        for width, height in {(params.width, params.height), params.output_size()}:
            if width % multiple or height % multiple or width <= 0 or height <= 0:
                raise ValueError(
                    f"Anima needs width and height that are positive multiples of {multiple}, got {width}x{height}"
                )
        if params.steps < 1:
            raise ValueError(f"steps must be at least 1, got {params.steps}")

    def _activate_locked(self) -> None:
        """Put the weights where self.memory_mode wants them (the lock is held), after removing the hooks of
        the mode before."""
        pipe = self.pipeline
        device, mode = self.runtime.device, self.memory_mode
        self._remove_hooks()
        set_vae_features(pipe.vae, self.footprint(), mode, int(pipe.vae_scale_factor))
        if mode == "high":
            pipe.to(device)
        elif mode == "balanced":
            for module in (pipe.text_conditioner, pipe.transformer, pipe.vae):
                module.to(device)
            encoder = getattr(pipe.vae, "encoder", None)  # image to image's VAE encode runs before the conditioner
            offload_text_encoders([pipe.text_encoder], pipe.text_conditioner, device, also_before=[encoder])
            free_device_memory(device)
        elif mode == "low":
            pipe.to("cpu")
            free_device_memory(device)
            self._chain = model_offload([getattr(pipe, name) for name in OFFLOAD_ORDER], device)
            encoder = getattr(pipe.vae, "encoder", None)
            if encoder is not None:  # image to image encodes after Qwen3 ran: send it back first
                add_hook_to_module(encoder, OffloadBefore(self._chain[:1]), append=True)
        else:
            sequential_offload(_modules(pipe), device, streamed=pipe.transformer)
            free_device_memory(device)
        self._on_device = True

    def _remove_hooks(self) -> None:
        remove_hooks(_modules(self.pipeline))
        self._chain = []

    def set_memory_mode(self, mode: MemoryMode) -> None:
        """Switch the diffusers features of `mode` on (and those of the previous mode off). Idempotent. A parked
        model (offload) only records the mode: activate applies it."""
        with self._lock:
            self.memory_mode = mode
            if self._on_device and self._pipe is not None:
                self._activate_locked()

    def footprint(self) -> Footprint:
        """Measured weights, measured once (the pre-flight check calls this from the event loop per request)."""
        pipe = self.pipeline
        if self._footprint is None:
            # The reference decode is bf16's; an fp32 VAE (the CPU, GPUs without bf16) needs twice as much.
            decoding = reference_footprint(self.spec).decoding_at(pipe.vae.dtype.itemsize)
            self._footprint = decoding.with_weights(
                denoiser=module_bytes(pipe.transformer, pipe.text_conditioner),
                text_encoders=module_bytes(pipe.text_encoder),
                vae=module_bytes(pipe.vae),
            )
        return self._footprint

    def offload(self) -> None:
        """Every hook off, the weights in CPU RAM; activate puts the memory mode back."""
        with self._lock:
            if self._pipe is None:
                return
            self._remove_hooks()
            if self.runtime.device != "cpu":
                self._pipe.to("cpu")
                free_device_memory(self.runtime.device)
            self._on_device = False

    def activate(self) -> None:
        with self._lock:
            if self._pipe is not None and not self._on_device:
                self._activate_locked()

    def unload(self) -> None:
        with self._lock:
            if self._pipe is not None:
                self._remove_hooks()
            self._pipe = None
            self._on_device = False
            free_device_memory(self.runtime.device)


def _modules(pipe: Any) -> list[torch.nn.Module]:
    return [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]


# ------------------------------------------------------------------------------------------ loading


def _new_pipeline(location: str, where: str, *, revision: str | None, local_files_only: bool) -> Any:
    """An AnimaModularPipeline with our blocks and the component specs recorded at `location`."""
    try:
        return AnimaModularPipeline(
            blocks=build_blocks(),
            pretrained_model_name_or_path=location,
            revision=revision,
            local_files_only=local_files_only,
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"{where}: no Anima pipeline config (modular_model_index.json or model_index.json) "
            f"could be read ({error_summary(e)})"
        ) from e


def _require(pipe: Any, names: tuple[str, ...], where: str, load_kwargs: dict[str, Any]) -> None:
    """load_components() only logs a warning when a component fails: turn that into a clear error."""
    missing = [n for n in names if getattr(pipe, n, None) is None]
    if not missing:
        return
    reason = ""
    try:  # load the first one again to learn why it failed
        spec = pipe.get_component_spec(missing[0])
        if spec.pretrained_model_name_or_path:
            spec.load(**{k: (v.get(missing[0]) if isinstance(v, dict) else v) for k, v in load_kwargs.items()})
        else:
            reason = " (the config names no location for it)"
    except Exception as e:
        reason = f" ({error_summary(e)})"
    raise ModelLoadError(f"{where}: could not load {', '.join(missing)}{reason}")


def _load_diffusers_format(
    location: str,
    where: str,
    dtype: torch.dtype,
    stages: LoadStages,
    *,
    revision: str | None = None,
    variant: str | None = None,
    local_files_only: bool = False,
) -> Any:
    stages("reading the pipeline config")
    pipe = _new_pipeline(location, where, revision=revision, local_files_only=local_files_only)
    stages("loading weights")
    # `dtype` (diffusers >= 0.40 deprecates `torch_dtype`); tokenizers and schedulers ignore it.
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local_files_only}
    if variant:
        kwargs["variant"] = {n: variant for n in ("transformer", "text_conditioner", "text_encoder", "vae")}
    if revision:
        # The index records no revision for its own components; pin those (not ones it borrows from other
        # repositories, where that revision would not exist) to the one asked for.
        own = [n for n in REQUIRED_COMPONENTS if pipe.get_component_spec(n).pretrained_model_name_or_path == location]
        kwargs["revision"] = {n: revision for n in own}
    try:
        pipe.load_components(**kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{where}: {error_summary(e)}") from e
    _require(pipe, REQUIRED_COMPONENTS, where, kwargs)
    return pipe


def _load_comfyui(source: ComfyUISource, dtype: torch.dtype, stages: LoadStages, local_files_only: bool) -> Any:
    anima_comfyui.check_files(source)
    config = source.config or anima_comfyui.DEFAULT_CONFIG_REPO
    config_dir: Path | None = None
    if Path(config).expanduser().is_dir():
        config_dir = Path(config).expanduser()
        config = str(config_dir)
    where = f"Anima config {config!r}"
    stages("reading the pipeline config")
    pipe = _new_pipeline(config, where, revision=None, local_files_only=local_files_only)
    stages("loading tokenizers and scheduler")
    names = ["tokenizer", "t5_tokenizer", "scheduler"]
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    pipe.load_components(names=names, **kwargs)
    _require(pipe, tuple(names), where, kwargs)
    anima_comfyui.load_comfyui_components(pipe, source, dtype, local_files_only, stage=stages, config_dir=config_dir)
    return pipe


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE=1 (read by huggingface_hub at import) also means: never touch the network."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - diffusers depends on it
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _load_pipeline(
    spec: ModelSpec, runtime: RuntimeOptions, dtype: torch.dtype, on_progress: LoadProgressCallback | None
) -> tuple[Any, LoadStages]:
    source = spec.source
    local_only = runtime.local_files_only or _hub_offline()
    if isinstance(source, BuiltinSource):
        if source.name != TINY_ANIMA_NAME:
            raise ModelLoadError(f"unknown built-in Anima model {source.name!r} (known: {TINY_ANIMA_NAME})")
        stages = LoadStages(on_progress, 4)
        stages(f"preparing {TINY_ANIMA_NAME}")
        try:
            path = ensure_tiny_anima(runtime.cache_dir)
        except OSError as e:
            reason = error_summary(e)
            raise ModelLoadError(f"could not write {TINY_ANIMA_NAME} under {runtime.cache_dir}: {reason}") from e
        where = f"built-in {TINY_ANIMA_NAME} ({path})"
        return _load_diffusers_format(str(path), where, dtype, stages, local_files_only=True), stages
    if isinstance(source, DirSource):
        path = Path(source.path).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"Anima model directory not found: {path}")
        stages = LoadStages(on_progress, 3)
        where = f"Anima directory {path}"
        return _load_diffusers_format(str(path), where, dtype, stages, local_files_only=local_only), stages
    if isinstance(source, HubSource):
        stages = LoadStages(on_progress, 3)
        pipe = _load_diffusers_format(
            source.repo_id,
            f"Anima repository {source.repo_id!r}",
            dtype,
            stages,
            revision=source.revision,
            variant=source.variant,
            local_files_only=local_only,
        )
        return pipe, stages
    if isinstance(source, ComfyUISource):
        stages = LoadStages(on_progress, 6)
        return _load_comfyui(source, dtype, stages, local_only), stages
    if isinstance(source, SingleFileSource):
        raise ModelLoadError(
            f"{source.path}: Anima has no single-file checkpoint format; give the three ComfyUI files "
            "(diffusion model, text encoder, VAE) instead"
        )
    raise ModelLoadError(f"unsupported model source {source!r}")


def load_anima(
    spec: ModelSpec, runtime: RuntimeOptions, on_progress: LoadProgressCallback | None = None
) -> AnimaBackend:
    """Load an Anima model from any source kind onto runtime.device. Every failure raises ModelLoadError."""
    if spec.family != "anima":
        raise ModelLoadError(f"model {spec.name!r} is a {spec.family} model, not Anima")
    dtype = resolve_dtype(runtime.dtype, runtime.device, "anima")
    try:
        pipe, stages = _load_pipeline(spec, runtime, dtype, on_progress)
        torchvision_shim.install()  # once for the process: the Cosmos DiT's forward needs it
        stages(f"moving to {runtime.device}")
        backend = AnimaBackend(spec, pipe, runtime)
        mode = resolve_mode(spec.memory, device_budget(runtime), backend.footprint())
        log_memory_mode(spec, mode, runtime)
        backend.set_memory_mode(mode)
        backend.activate()
        if spec.compile and compiling.should_compile(spec.name, runtime.device):
            compile_and_warm_up(backend)
    except ModelLoadError:
        free_device_memory(runtime.device)
        raise
    except Exception as e:  # anything else from diffusers/transformers/torch: keep the traceback in the log
        log.warning("loading Anima model %r failed", spec.name, exc_info=True)
        free_device_memory(runtime.device)
        raise ModelLoadError(f"model {spec.name!r} could not be loaded: {error_summary(e)}") from e
    stages.finish()
    return backend


def compile_and_warm_up(backend: AnimaBackend) -> None:
    """torch.compile of the DiT, then one short generation at the model's typical size, so the compilation
    happens at load rather than in the first user's job. (No channels_last: the DiT is linear layers.)"""
    compiling.compile_module(backend.pipeline.transformer)
    edge = backend.footprint().typical_px
    started = time.monotonic()
    backend.generate(GenerationParams("", "", edge, edge, 2, 4.0, (0,), "flow_euler"))
    log.info("model %s: compiled and warmed up in %.1f s", backend.spec.name, time.monotonic() - started)
