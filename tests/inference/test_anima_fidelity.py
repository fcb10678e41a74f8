"""Anima as ComfyUI runs it, on the tiny model: prompt weights scale the LLM adapter's output rows of their
T5 tokens (the Qwen3 states are not weighted), unweighted prompts are diffusers' own blocks bit for bit, and
a bf16 model keeps float32 latents between steps. The rule is written down in docs/fidelity.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers.modular_pipelines import ModularPipelineBlocks

from inference.backends.anima import (
    AnimaBackend,
    WeightedAnimaTextConditioningStep,
    WeightedAnimaTextEncoderStep,
    comfyui_tokens,
    load_anima,
)
from inference.specs import DirSource, ModelSpec, RuntimeOptions
from inference.tiny.anima import ensure_tiny_anima
from inference.types import GenerationParams

NEGATIVE = "worst quality, low quality"
STATE_KEYS = [
    "prompt_embeds",
    "negative_prompt_embeds",
    "qwen_prompt_embeds",
    "negative_qwen_prompt_embeds",
    "t5_input_ids",
    "negative_t5_input_ids",
    "t5_weights",
    "negative_t5_weights",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_anima(tmp_path_factory.mktemp("anima-fidelity"))


def _load(tiny_dir: Path, dtype: str | None) -> AnimaBackend:
    spec = ModelSpec(name="anima-fidelity", family="anima", dialect="anima", source=DirSource(tiny_dir))
    return load_anima(spec, RuntimeOptions(device="cpu", dtype=dtype, cache_dir=tiny_dir.parent, local_files_only=True))


@pytest.fixture(scope="module")
def backend(tiny_dir: Path) -> AnimaBackend:
    return _load(tiny_dir, None)


def run(pipe: Any, prompt: str, negative: str = NEGATIVE, keys: list[str] | None = None) -> dict[str, Any]:
    """One 1-step 64 px call; the pipeline state's values named in `keys`."""
    out = pipe(
        prompt=prompt,
        negative_prompt=negative,
        height=64,
        width=64,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(7),
        output=keys or STATE_KEYS,
    )
    return dict(out)


def t5_ids(pipe: Any, text: str) -> list[int]:
    return [int(i) for i in pipe.t5_tokenizer(text).input_ids]


# ---------------------------------------------------------------------------------------- weighting rows


def test_the_blocks_are_ours(backend: AnimaBackend) -> None:
    blocks = backend.pipeline.blocks
    assert isinstance(blocks.sub_blocks["text_encoder"], WeightedAnimaTextEncoderStep)
    for branch in blocks.sub_blocks["denoise"].sub_blocks.values():
        assert isinstance(branch.sub_blocks["text_conditioning"], WeightedAnimaTextConditioningStep)


def test_unweighted_prompt_is_diffusers_own_conditioning(backend: AnimaBackend, tiny_dir: Path) -> None:
    from diffusers import AnimaModularPipeline

    prompt = "1girl, solo, smile, long hair, night sky"
    ours = run(backend.pipeline, prompt)
    plain = AnimaModularPipeline.from_pretrained(str(tiny_dir))
    plain.load_components(dtype=torch.float32)
    theirs = run(plain, prompt, keys=[k for k in STATE_KEYS if "weights" not in k])
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    assert ours["t5_weights"] is None and ours["negative_t5_weights"] is None


def test_escaped_brackets_are_the_literal_text(backend: AnimaBackend, tiny_dir: Path) -> None:
    from diffusers import AnimaModularPipeline

    ours = run(backend.pipeline, "1girl, honkai \\(series\\)")
    plain = AnimaModularPipeline.from_pretrained(str(tiny_dir))
    plain.load_components(dtype=torch.float32)
    theirs = run(plain, "1girl, honkai (series)", keys=["prompt_embeds", "negative_prompt_embeds"])
    assert torch.equal(ours["prompt_embeds"], theirs["prompt_embeds"])
    assert torch.equal(ours["negative_prompt_embeds"], theirs["negative_prompt_embeds"])


def test_a_weight_multiplies_exactly_its_t5_rows(backend: AnimaBackend) -> None:
    pipe = backend.pipeline
    plain_text = "1girl, solo smile long hair, night sky"
    weighted_text = "1girl, solo (smile long:0.5) hair, night sky"
    # Fragment boundaries fall between words here, so the T5 ids are those of the plain text.
    assert t5_ids(pipe, "1girl, solo ")[:-1] + t5_ids(pipe, "smile long")[:-1] + t5_ids(pipe, " hair, night sky") == (
        t5_ids(pipe, plain_text)
    )
    plain = run(pipe, plain_text)
    weighted = run(pipe, weighted_text)

    ids = plain["t5_input_ids"][0].tolist()
    assert weighted["t5_input_ids"][0].tolist() == ids
    first = len(t5_ids(pipe, "1girl, solo ")) - 1
    span = range(first, first + len(t5_ids(pipe, "smile long")) - 1)
    expected_weights = [0.5 if i in span else 1.0 for i in range(len(ids))]
    assert weighted["t5_weights"][0].tolist() == expected_weights

    # Qwen3 states are not weighted.
    assert torch.equal(weighted["qwen_prompt_embeds"], plain["qwen_prompt_embeds"])
    rows_plain, rows_weighted = plain["prompt_embeds"][0], weighted["prompt_embeds"][0]
    assert rows_weighted.shape == rows_plain.shape == (16, 32)  # padded to the conditioner's minimum length
    for row in range(rows_plain.shape[0]):
        factor = 0.5 if row in span else 1.0
        assert torch.equal(rows_weighted[row], rows_plain[row] * factor), row
    assert not rows_plain[len(ids) :].any()  # the padding stays zero
    # The negative prompt had no weights: its conditioning is untouched.
    assert torch.equal(weighted["negative_prompt_embeds"], plain["negative_prompt_embeds"])


def test_weights_change_only_the_rows_never_the_qwen_states_or_ids(backend: AnimaBackend) -> None:
    low = run(backend.pipeline, "(@artist:0.1), 1girl, smile")
    high = run(backend.pipeline, "(@artist:1.3), 1girl, smile")
    assert torch.equal(low["qwen_prompt_embeds"], high["qwen_prompt_embeds"])
    assert torch.equal(low["t5_input_ids"], high["t5_input_ids"])
    n = len(t5_ids(backend.pipeline, "@artist")) - 1
    torch.testing.assert_close(low["prompt_embeds"][0, :n] * 13, high["prompt_embeds"][0, :n])
    assert torch.equal(low["prompt_embeds"][0, n:], high["prompt_embeds"][0, n:])


def test_artist_at_0_1_is_comfyuis_arithmetic(backend: AnimaBackend) -> None:
    """ComfyUI: each fragment tokenized alone (Qwen3 weights forced to 1, T5 closed by EOS), then
    `out = llm_adapter(qwen_states, t5_ids); out = out * t5_weights.unsqueeze(-1)`, padded to 512 rows
    (16 for the tiny conditioner)."""
    pipe = backend.pipeline
    fragments = [("@artist", 0.1), (", 1girl, smile", 1.0)]
    qwen_ids = [i for piece, _ in fragments for i in pipe.tokenizer(piece).input_ids]
    t5 = [i for piece, _ in fragments for i in t5_ids(pipe, piece)[:-1]] + [pipe.t5_tokenizer.eos_token_id]
    weights = [0.1] * (len(t5_ids(pipe, "@artist")) - 1) + [1.0] * (len(t5) - len(t5_ids(pipe, "@artist")) + 1)
    with torch.no_grad():
        qwen = pipe.text_encoder(input_ids=torch.tensor([qwen_ids])).last_hidden_state
        out = pipe.text_conditioner(qwen, torch.tensor([t5]))[:, : len(t5)]
        out = out * torch.tensor([weights]).unsqueeze(-1)
        out = F.pad(out, (0, 0, 0, 16 - out.shape[1]))

    ours = run(pipe, "(@artist:0.1), 1girl, smile")
    assert ours["t5_input_ids"][0].tolist() == t5
    assert torch.equal(ours["qwen_prompt_embeds"], qwen)
    torch.testing.assert_close(ours["prompt_embeds"], out, rtol=0, atol=1e-6)


def test_weighted_negative_prompt_rows(backend: AnimaBackend) -> None:
    plain = run(backend.pipeline, "1girl", negative="worst quality low quality")
    weighted = run(backend.pipeline, "1girl", negative="(worst quality:1.4) low quality")
    assert torch.equal(weighted["negative_t5_input_ids"], plain["negative_t5_input_ids"])
    n = len(t5_ids(backend.pipeline, "worst quality")) - 1
    assert weighted["negative_t5_weights"][0, :n].tolist() == pytest.approx([1.4] * n)
    assert weighted["t5_weights"] is None
    assert torch.equal(weighted["prompt_embeds"], plain["prompt_embeds"])
    scale = torch.tensor(1.4)
    expected = torch.cat([plain["negative_prompt_embeds"][:, :n] * scale, plain["negative_prompt_embeds"][:, n:]], 1)
    torch.testing.assert_close(weighted["negative_prompt_embeds"], expected, rtol=0, atol=0)


def test_comfyui_tokens_tokenize_each_fragment_alone(backend: AnimaBackend) -> None:
    tok = backend.pipeline.t5_tokenizer
    fragments = [("1girl, ", 1.0), ("smile", 1.3), (", hat", 1.0)]
    ids, weights = comfyui_tokens(tok, fragments, tok.eos_token_id)
    pieces = [tok(p, add_special_tokens=False).input_ids for p, _ in fragments]
    assert ids == pieces[0] + pieces[1] + pieces[2] + [tok.eos_token_id]
    assert weights == [1.0] * len(pieces[0]) + [1.3] * len(pieces[1]) + [1.0] * (len(pieces[2]) + 1)
    # One fragment: the ids of the whole text, as diffusers tokenizes it.
    assert comfyui_tokens(tok, [("1girl, smile, hat", 1.0)], tok.eos_token_id)[0] == tok("1girl, smile, hat").input_ids


# ------------------------------------------------------------------------------------ float32 latents


class LatentDtypes(ModularPipelineBlocks):
    """A loop block (last in each step) that records the dtypes of the latents after the step and of the
    guided prediction the step used."""

    model_name = "anima"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    @property
    def description(self) -> str:
        return "test: record the latents' dtype after every step"

    def __call__(self, components: Any, block_state: Any, i: int, t: torch.Tensor) -> tuple[Any, Any]:
        self.seen.append((block_state.latents.dtype, block_state.noise_pred.dtype))
        return components, block_state


def test_bf16_model_keeps_float32_latents_between_steps(tiny_dir: Path) -> None:
    backend = _load(tiny_dir, "bfloat16")
    pipe = backend.pipeline
    assert pipe.transformer.dtype == torch.bfloat16
    recorder = LatentDtypes()
    for branch in pipe._blocks.sub_blocks["denoise"].sub_blocks.values():  # the blocks it runs, not a copy
        branch.sub_blocks["denoise"].sub_blocks["test_latent_dtypes"] = recorder
    prompt = "1girl, (smile:1.2), (@artist:0.1)"  # the weighted rows in bf16 too
    images = backend.generate(GenerationParams(prompt, NEGATIVE, 64, 64, 3, 4.0, (5,), "flow_euler"))
    assert images[0].size == (64, 64)
    assert recorder.seen == [(torch.float32, torch.float32)] * 3  # CFG and the step in float32, as ComfyUI
    conditioning = run(pipe, prompt, keys=["prompt_embeds", "t5_weights"])
    assert conditioning["prompt_embeds"].dtype == torch.bfloat16
    assert conditioning["t5_weights"].dtype == torch.float32
