"""Building identities: one build of a character at a time."""

import pytest
from filelock import FileLock

from storybook import registry
from storybook.errors import TrainingError
from storybook.tiny_model import build_tokenizer
from storybook.training.personalize import build_identity


def test_a_second_build_of_the_same_character_is_refused_while_one_runs(home, sample_photos):
    registry.add_character(home, "Mia", sample_photos, build_tokenizer())
    folder = registry.character_dir(home, "Mia")
    with FileLock(folder / ".identity.lock"):  # another storybook process is training Mia
        for method in ("lora", "dreambooth"):
            with pytest.raises(TrainingError, match="Mia is already being trained or prepared by another storybook"):
                build_identity(home, "Mia", method, overrides={"steps": 1}, show_progress=False)
    assert not (folder / "checkpoints").exists() and not (folder / "identity").exists()
