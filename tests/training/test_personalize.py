"""Building identities: one build of a character at a time, and none of a character being removed."""

import threading

import pytest
from filelock import FileLock

from storybook import registry
from storybook.errors import CharacterError, TrainingError
from storybook.tiny_model import build_tokenizer
from storybook.training.personalize import build_identity


def test_a_second_build_of_the_same_character_is_refused_while_one_runs(home, sample_photos):
    registry.add_character(home, "Mia", sample_photos, build_tokenizer())
    folder = registry.character_dir(home, "Mia")
    with FileLock(registry.character_lock(home, "mia")):  # another storybook process is training Mia
        for method in ("lora", "dreambooth"):
            with pytest.raises(TrainingError, match="Mia is already being trained or prepared by another storybook"):
                build_identity(home, "Mia", method, overrides={"steps": 1}, show_progress=False)
    assert not (folder / "checkpoints").exists() and not (folder / "identity").exists()


def test_removing_a_character_while_it_trains_stops_the_training_and_nothing_comes_back(home, mia, sample_photos):
    """The training checkpoints and draws sample grids every 2 steps: none of it may land in the removed folder."""
    steps_done, outcome = threading.Event(), {}
    settings = {"steps": 500, "checkpoint_every": 2, "prior_preservation": False, "num_class_images": 0}

    def train() -> None:
        try:
            build_identity(home, "Mia", "lora", overrides=settings, show_progress=False, on_step=step_done)
        except CharacterError as error:
            outcome["error"] = str(error)

    def step_done(report) -> None:
        if report.step >= 3:
            steps_done.set()

    training = threading.Thread(target=train)
    training.start()
    assert steps_done.wait(timeout=600)
    waited = []
    folder = registry.remove_character(home, "Mia", waiting=lambda: waited.append("waiting"))
    training.join(timeout=600)
    assert waited == ["waiting"] and "Mia is being removed" in outcome["error"]
    assert not folder.exists() and list((home / "characters").iterdir()) == []  # no samples, checkpoints or lock
    registry.add_character(home, "Mia", sample_photos, build_tokenizer())  # the name is free again
