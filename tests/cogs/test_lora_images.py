"""A LoRA end to end, as a user meets it: /generate through the real command tree (simcord), the real worker on the
tiny SDXL, the images read back from the uploaded attachments. The LoRA changes the image in proportion to its
weight, is recorded in the PNG as WebUI records it, and is gone after its job: the next image without it is
bit-identical to the one made before it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import simcord
from PIL import Image

from inference.png import read_parameters
from tests.cogs.conftest import BotFactory, server
from tests.cogs.test_generate import finish, jobs_of


@pytest.fixture
def loras_dir(tmp_path: Path) -> Path:
    from inference.tiny.lora import tiny_sdxl_lora, write_lora

    folder = tmp_path / "data" / "loras"
    write_lora(folder / "ink.safetensors", tiny_sdxl_lora("kohya", seed=2))
    return folder


async def test_a_lora_job_changes_the_image_by_its_weight_and_leaves_nothing_behind(
    make_bot: BotFactory, loras_dir: Path
) -> None:
    bot = await make_bot()
    ink = bot.service.loras.get("ink")
    assert ink is not None
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")

        async def image(**options: object) -> tuple[np.ndarray, str]:
            result = await alice.slash(channel, "generate", prompt="1girl, smile", steps=2, seed=11, **options)
            assert result.acknowledged and not result.ephemeral, result.response
            job = await finish(env, bot, (await jobs_of(bot, alice.id))[0].id)
            assert job.state == "done", job.error
            assert result.response is not None
            (attachment,) = result.response.attachments
            data = await attachment.read()
            parameters = read_parameters(data)
            assert parameters is not None
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
            return pixels, parameters

        before, plain = await image()
        half, _ = await image(lora="ink:0.5")
        full, recorded = await image(lora="ink:1")
        after, _ = await image()

        assert np.array_equal(before, after)  # the LoRA left the pipeline exactly as it was
        change_half = float(np.abs(half - before).mean())
        change_full = float(np.abs(full - before).mean())
        assert 0 < change_half < change_full
        assert 0.3 < change_half / change_full < 0.7, (change_half, change_full)
        assert "<lora:" not in plain and "Lora hashes" not in plain
        prompt = recorded.splitlines()[0]
        assert prompt.endswith("<lora:ink:1>"), prompt
        assert f'Lora hashes: "ink: {ink.short_hash}"' in recorded, recorded
