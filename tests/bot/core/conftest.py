"""Fixtures of the tests that run real processes on a data directory (restart, faults, crash)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def shared_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models folder for every process of a test module: the tiny model is built once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def data_dir(tmp_path: Path, shared_models: Path) -> Path:
    """A fresh data directory whose models/ is the module's shared one."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    return data
