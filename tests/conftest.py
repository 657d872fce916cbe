"""Shared fixtures: the tiny model is built once per test session; every test gets its own data root."""

import os
from pathlib import Path

import pytest

from storybook.models import tiny_model_path
from storybook.sample_photos import write_sample_photos

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a model hub


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A `models/` folder holding the tiny model, built once (~1-2 min on 2 CPU cores)."""
    root = tmp_path_factory.mktemp("shared-home")
    tiny_model_path(root)
    return root / "models"


@pytest.fixture
def home(tmp_path, tiny_models_dir) -> Path:
    """An empty data root whose models/ is the shared tiny model."""
    root = tmp_path / "home"
    root.mkdir()
    (root / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> list[Path]:
    """Five drawn photos of the sample toddler (curly red hair, yellow raincoat)."""
    return write_sample_photos(tmp_path_factory.mktemp("photos"))
