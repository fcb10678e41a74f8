"""LoRAs applied to the tiny pipelines through LoraAdapters (inference/lora_adapters.py), with LoRA files made in
code (inference/tiny/lora.py). The diffusers pipelines are called directly: the backends' wiring is tested with them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference import torchvision_shim
from inference.lora_adapters import LoraAdapters
from inference.loras import LoraLoadError, file_hashes
from inference.quiet import silence_library_output
from inference.tiny.anima import build_tiny_anima
from inference.tiny.lora import tiny_anima_lora, tiny_sdxl_lora, write_lora
from inference.tiny.sdxl import build_tiny_sdxl
from inference.types import LoraFile

silence_library_output()


def lora_file(path: Path, name: str = "test", weight: float = 1.0) -> LoraFile:
    return LoraFile(name, path, file_hashes(path)[0], weight)


@pytest.fixture(scope="module")
def sdxl_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sdxl-loras")
    return {
        "kohya": write_lora(root / "kohya.safetensors", tiny_sdxl_lora("kohya", seed=1)),
        "diffusers": write_lora(root / "diffusers.safetensors", tiny_sdxl_lora("diffusers", seed=1)),
        "other": write_lora(root / "other.safetensors", tiny_sdxl_lora("kohya", seed=2, text_encoder=False)),
        "third": write_lora(root / "third.safetensors", tiny_sdxl_lora("diffusers", seed=3)),
    }


@pytest.fixture()
def sdxl() -> Iterator[Any]:
    yield build_tiny_sdxl()


def sdxl_image(pipe: Any, seed: int = 7, prompt: str = "1girl, smile") -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    out = pipe(prompt, num_inference_steps=4, width=64, height=64, generator=generator, output_type="np")
    return np.asarray(out.images[0], dtype=np.float64)


def test_a_lora_changes_the_image_in_proportion_to_its_weight(sdxl: Any, sdxl_files: dict[str, Path]) -> None:
    adapters = LoraAdapters(sdxl)
    before = sdxl_image(sdxl)
    change: dict[float, float] = {}
    for weight in (0.25, 0.5, 1.0):
        with adapters.applied([lora_file(sdxl_files["kohya"], weight=weight)]):
            change[weight] = float(np.abs(sdxl_image(sdxl) - before).mean())
    assert 0 < change[0.25] < change[0.5] < change[1.0]
    # Close to linear at these sizes: half the weight, about half the change.
    assert change[0.5] / change[1.0] == pytest.approx(0.5, abs=0.1)
    assert change[0.25] / change[1.0] == pytest.approx(0.25, abs=0.1)
    assert adapters.loads == 1


def test_the_lora_is_gone_after_the_job(sdxl: Any, sdxl_files: dict[str, Path]) -> None:
    adapters = LoraAdapters(sdxl)
    before = sdxl_image(sdxl)
    with adapters.applied([lora_file(sdxl_files["kohya"]), lora_file(sdxl_files["other"], weight=0.5)]):
        assert not np.array_equal(sdxl_image(sdxl), before)
    assert np.array_equal(sdxl_image(sdxl), before)  # bit-identical, the adapters still loaded
    assert len(adapters.loaded) == 2


def test_the_lora_is_gone_after_a_job_that_failed(sdxl: Any, sdxl_files: dict[str, Path]) -> None:
    adapters = LoraAdapters(sdxl)
    before = sdxl_image(sdxl)
    with pytest.raises(RuntimeError, match="boom"), adapters.applied([lora_file(sdxl_files["kohya"])]):
        raise RuntimeError("boom")
    assert np.array_equal(sdxl_image(sdxl), before)


def test_the_same_lora_twice_loads_once(sdxl: Any, sdxl_files: dict[str, Path]) -> None:
    adapters = LoraAdapters(sdxl)
    first = lora_file(sdxl_files["kohya"], weight=1.0)
    with adapters.applied([first]):
        once = sdxl_image(sdxl)
    with adapters.applied([first]):
        again = sdxl_image(sdxl)
    assert adapters.loads == 1
    assert np.array_equal(once, again)
    with adapters.applied([lora_file(sdxl_files["other"])]):
        pass
    assert adapters.loads == 2


def test_weights_of_a_lora_named_twice_add_up(sdxl: Any, sdxl_files: dict[str, Path]) -> None:
    adapters = LoraAdapters(sdxl)
    with adapters.applied([lora_file(sdxl_files["kohya"], weight=1.0)]):
        whole = sdxl_image(sdxl)
    halves = [lora_file(sdxl_files["kohya"], weight=0.5), lora_file(sdxl_files["kohya"], weight=0.5)]
    with adapters.applied(halves):
        assert np.array_equal(sdxl_image(sdxl), whole)
    assert adapters.loads == 1


def test_kohya_and_diffusers_layouts_give_the_same_image(sdxl: Any, sdxl_files: dict[str, Path]) -> None:
    adapters = LoraAdapters(sdxl)
    with adapters.applied([lora_file(sdxl_files["kohya"], weight=0.8)]):
        kohya = sdxl_image(sdxl)
    with adapters.applied([lora_file(sdxl_files["diffusers"], weight=0.8)]):
        diffusers = sdxl_image(sdxl)
    assert np.allclose(kohya, diffusers, atol=1e-5)
    assert adapters.loads == 2


def test_the_least_recently_used_adapter_makes_room(sdxl: Any, sdxl_files: dict[str, Path]) -> None:
    adapters = LoraAdapters(sdxl, capacity=2)
    kohya, other, third = (lora_file(sdxl_files[n]) for n in ("kohya", "other", "third"))
    before = sdxl_image(sdxl)
    for lora in (kohya, other, kohya, third):  # third evicts other (kohya was used since)
        with adapters.applied([lora]):
            pass
    assert adapters.loaded == (kohya.sha256, third.sha256)
    assert adapters.loads == 3
    assert {n for names in sdxl.get_list_adapters().values() for n in names} == {
        f"lora_{kohya.sha256[:16]}",
        f"lora_{third.sha256[:16]}",
    }
    with pytest.raises(LoraLoadError, match="At most 2"), adapters.applied([kohya, other, third]):
        pass
    adapters.clear()
    assert adapters.loaded == ()
    assert np.array_equal(sdxl_image(sdxl), before)
    # clear() also takes peft's (empty) wrappers off: every layer is again the module it was.
    fresh = build_tiny_sdxl()
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert [type(m) for m in getattr(sdxl, name).modules()] == [type(m) for m in getattr(fresh, name).modules()]


def test_a_missing_or_broken_file_fails_clearly_and_changes_nothing(
    sdxl: Any, sdxl_files: dict[str, Path], tmp_path: Path
) -> None:
    adapters = LoraAdapters(sdxl)
    before = sdxl_image(sdxl)
    gone = LoraFile("gone", tmp_path / "gone.safetensors", "0" * 64, 1.0)
    with pytest.raises(LoraLoadError, match="gone is not on this worker"), adapters.applied([gone]):
        pass
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with (
        pytest.raises(LoraLoadError, match="broken could not be loaded"),
        adapters.applied([lora_file(broken, "broken")]),
    ):
        pass
    anima = write_lora(tmp_path / "anima.safetensors", tiny_anima_lora("comfyui"))
    with (
        pytest.raises(LoraLoadError, match="no weights this model can use"),
        adapters.applied([lora_file(anima, "anima")]),
    ):
        pass
    assert adapters.loads == 0 and adapters.loaded == ()
    assert sdxl.get_list_adapters() == {}
    assert np.array_equal(sdxl_image(sdxl), before)


def test_group_offloading_moves_the_lora_layers_too(sdxl: Any, sdxl_files: dict[str, Path]) -> None:
    """Minimal mode's leaf-level group offloading: the LoRA layers are new leaves, hooked after the load (on the
    CPU the onload device is the CPU, so this checks the hooks are re-applied and the arithmetic unchanged)."""
    from diffusers.hooks import apply_group_offloading

    adapters = LoraAdapters(sdxl)
    with adapters.applied([lora_file(sdxl_files["kohya"], weight=0.7)]):
        plain = sdxl_image(sdxl)
    adapters.clear()
    before = sdxl_image(sdxl)
    for model in (sdxl.unet, sdxl.text_encoder, sdxl.text_encoder_2, sdxl.vae):
        apply_group_offloading(
            model, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"), offload_type="leaf_level"
        )
    with adapters.applied([lora_file(sdxl_files["kohya"], weight=0.7)]):
        offloaded = sdxl_image(sdxl)
    lora_layer = sdxl.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.lora_A
    assert any(hasattr(m, "_diffusers_hook") for m in lora_layer.modules())
    assert np.allclose(offloaded, plain, atol=1e-6)
    assert np.array_equal(sdxl_image(sdxl), before)


# -- Anima ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anima() -> Any:
    torchvision_shim.install()  # the Cosmos DiT's forward needs it (as the backend installs it)
    return build_tiny_anima()


def anima_image(pipe: Any, seed: int = 3) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    images = pipe(
        prompt="1girl, smile",
        num_inference_steps=3,
        width=64,
        height=64,
        generator=generator,
        output_type="np",
        output="images",
    )
    return np.asarray(images[0], dtype=np.float64)


def test_anima_loras_in_diffusers_and_comfyui_layouts(anima: Any, tmp_path: Path) -> None:
    adapters = LoraAdapters(anima)
    # The DiT alone changes the image in proportion (the LLM adapter's change goes through a nonlinear text path).
    dit = {"scale": 4.0, "text_conditioner": False}
    comfy = lora_file(write_lora(tmp_path / "comfy.safetensors", tiny_anima_lora("comfyui", **dit)))  # type: ignore[arg-type]
    native = lora_file(write_lora(tmp_path / "native.safetensors", tiny_anima_lora("diffusers", **dit)))  # type: ignore[arg-type]
    before = anima_image(anima)
    try:
        change: dict[float, float] = {}
        for weight in (0.5, 1.0):
            with adapters.applied([LoraFile(comfy.name, comfy.path, comfy.sha256, weight)]):
                image = anima_image(anima)
                change[weight] = float(np.abs(image - before).mean())
        with adapters.applied([native]):
            assert np.allclose(anima_image(anima), image, atol=1e-5)
        assert 0 < change[0.5] < change[1.0]
        assert change[0.5] / change[1.0] == pytest.approx(0.5, abs=0.15)
        assert adapters.loads == 2
        assert np.array_equal(anima_image(anima), before)

        both = lora_file(write_lora(tmp_path / "both.safetensors", tiny_anima_lora("comfyui")))
        with adapters.applied([both]):
            assert set(anima.get_list_adapters()) == {"transformer", "text_conditioner"}  # the DiT and LLM adapter
            assert not np.array_equal(anima_image(anima), before)
        assert np.array_equal(anima_image(anima), before)
    finally:
        adapters.clear()


def test_anima_refuses_kohya_files_and_sdxl_loras(anima: Any, tmp_path: Path) -> None:
    adapters = LoraAdapters(anima)
    before = anima_image(anima)
    kohya = lora_file(write_lora(tmp_path / "kohya.safetensors", tiny_anima_lora("kohya")), "kohya")
    with pytest.raises(LoraLoadError, match="kohya's Anima layout"), adapters.applied([kohya]):
        pass
    sdxl = lora_file(write_lora(tmp_path / "sdxl.safetensors", tiny_sdxl_lora("diffusers")), "sdxl")
    with pytest.raises(LoraLoadError, match="no weights this model can use"), adapters.applied([sdxl]):
        pass
    assert adapters.loads == 0
    assert anima.get_list_adapters() == {}
    assert np.array_equal(anima_image(anima), before)


def test_lora_layers_take_the_models_half_precision(sdxl_files: dict[str, Path], tmp_path: Path) -> None:
    """On CUDA the models are fp16/bf16: the LoRA layers follow the layer they wrap, whatever the file holds (fp16
    here), and the job after is still bit-identical (bf16 stands in for CUDA's half precision on the CPU)."""
    pipe = build_tiny_sdxl().to(dtype=torch.bfloat16)
    half = write_lora(tmp_path / "half.safetensors", {k: v.half() for k, v in tiny_sdxl_lora("kohya").items()})
    file = lora_file(half)
    adapters = LoraAdapters(pipe)
    before = sdxl_image(pipe)
    with adapters.applied([file]):
        layer = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
        assert layer.lora_A[f"lora_{file.sha256[:16]}"].weight.dtype == torch.bfloat16
        assert not np.array_equal(sdxl_image(pipe), before)
    assert np.array_equal(sdxl_image(pipe), before)
