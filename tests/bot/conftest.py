"""Fixtures for tests that run the real service: store, queue, worker and the tiny built-in models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import load_config
from bot.core.service import GenerationService
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from inference.cache import Loader, ModelCache
from inference.registry import load_backend
from inference.specs import RuntimeOptions

ServiceFactory = Callable[..., Awaitable[GenerationService]]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built once per test session."""
    return tmp_path_factory.mktemp("models")


def request(prompt: str = "1girl, smile", model: str = "tiny-sdxl", **kw: Any) -> GenerationRequest:
    kw.setdefault("size", "64x64")
    kw.setdefault("steps", 2)
    return GenerationRequest(model, PromptChoices(prompt), **kw)


@pytest.fixture
async def make_service(tmp_path: Path, models_dir: Path) -> AsyncIterator[ServiceFactory]:
    services: list[GenerationService] = []

    async def make(config_text: str = "", loader: Loader = load_backend, data: str = "data") -> GenerationService:
        path = tmp_path / f"config-{len(services)}.toml"
        path.write_text(f'data_dir = "{data}"\n[tags]\nimport_default = false\n{config_text}', encoding="utf-8")
        config = load_config(path)
        runtime = RuntimeOptions("cpu", None, models_dir, vram_limit=config.vram_limit)  # [inference] vram_limit_gb
        cache = ModelCache(runtime, capacity=2, location="cpu", loader=loader)
        service = GenerationService(config, cache)
        await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.close()
