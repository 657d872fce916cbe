"""Fixtures of the training tests."""

import pytest

from storybook import registry
from storybook.tiny_model import build_tokenizer


@pytest.fixture
def mia(home, sample_photos):
    """The sample toddler registered in a fresh data root."""
    return registry.add_character(home, "Mia", sample_photos, build_tokenizer())
