import pytest

from storybook.errors import TrainingError
from storybook.identities import resolve_config


def test_published_defaults_for_real_models_and_scaled_ones_for_the_tiny_and_mini_models():
    lora = resolve_config("lora", 860_000_000)
    assert (lora.steps, lora.learning_rate, lora.rank, lora.prior_loss_weight) == (800, 1e-4, 8, 1.0)
    dreambooth = resolve_config("dreambooth", 860_000_000)
    assert (dreambooth.learning_rate, dreambooth.num_class_images) == (2e-6, 200)
    tiny = resolve_config("lora", 1_400_000)
    assert tiny.steps < lora.steps and tiny.num_class_images < lora.num_class_images
    mini = resolve_config("lora", 5_800_000)  # storybook-mini: the tiny model's rate spoils its pictures
    assert mini.learning_rate < tiny.learning_rate and mini.steps > tiny.steps
    assert mini.lora_convolutions and not lora.lora_convolutions  # attention alone learns nothing on storybook-mini
    assert resolve_config("dreambooth", 5_800_000).learning_rate < mini.learning_rate


def test_sdxl_gets_its_published_defaults_and_full_fine_tunes_checkpoint_their_gradients():
    xl = resolve_config("lora", 2_567_000_000, family="sdxl")  # diffusers' train_dreambooth_lora_sdxl.py README
    assert (xl.steps, xl.learning_rate, xl.rank, xl.grad_accum) == (500, 1e-4, 4, 4)
    assert resolve_config("lora", 1_400_000, family="sdxl").steps == resolve_config("lora", 1_400_000).steps  # tiny
    for family, parameters in (("sd", 860_000_000), ("sdxl", 2_567_000_000)):
        assert resolve_config("dreambooth", parameters, family=family).gradient_checkpointing
    assert not resolve_config("lora", 860_000_000).gradient_checkpointing


def test_overrides_are_applied_and_checked():
    assert resolve_config("lora", 10, {"steps": 7, "rank": 16}).model_dump()["steps"] == 7
    with pytest.raises(TrainingError, match="steps"):
        resolve_config("lora", 10, {"steps": 0})
    with pytest.raises(TrainingError, match="mixed_precision"):
        resolve_config("lora", 10, {"mixed_precision": "fp8"})
