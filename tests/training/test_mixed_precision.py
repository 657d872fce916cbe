"""Mixed precision as a GPU runs it, on the CPU: every method trains 2 steps under bf16 autocast (the CPU's refusal of
mixed precision lifted), so a dtype mistake (an fp32 embedding in a half-precision text encoder, a mask or an
embedding left in fp32) fails here rather than on a parent's card. bf16 on this CPU is ~10x slower: tiny model,
2 steps, no sample grids unless the test is about them."""

import math

import pytest
import torch
from safetensors.torch import load_file

from storybook import registry
from storybook.models import load_tokenizer
from storybook.render.configure import update_config
from storybook.training.loop import train_identity

pytestmark = pytest.mark.slow
TWO_STEPS = {"steps": 2, "mixed_precision": "bf16", "checkpoint_every": 1, "prior_preservation": False}


@pytest.fixture
def bf16_on_the_cpu(monkeypatch):
    """Lift the refusal of mixed precision on the CPU (it is refused there only for being slow)."""
    monkeypatch.setattr("storybook.training.plan.check_precision_on", lambda device, config: None)


def trained_in_bf16(home, method: str, settings: dict, **options):
    """Train `method` for Mia under bf16 autocast and check the run stayed finite; return its metadata."""
    metadata = train_identity(
        home, "Mia", method, overrides=TWO_STEPS | settings, show_progress=False, sample_grids=False, **options
    )
    assert metadata.config.mixed_precision == "bf16" and len(metadata.loss_history) == 2
    assert all(math.isfinite(loss) for loss in metadata.loss_history)
    assert math.isfinite(metadata.photo_loss_after)
    return metadata


@pytest.mark.parametrize(
    "method, settings",
    [
        ("lora", {"train_text_encoder": True}),
        ("dreambooth", {"prior_preservation": True, "num_class_images": 2, "class_image_steps": 2}),
        ("textual-inversion", {}),
        ("hypernetwork", {}),
        ("pivotal", {"embedding_steps": 1}),
    ],
)
def test_every_method_trains_two_steps_under_bf16_autocast(home, mia, bf16_on_the_cpu, method, settings):
    metadata = trained_in_bf16(home, method, settings)
    assert (registry.character_dir(home, "Mia") / "identity" / metadata.files[0]).exists()


def test_pivotal_tuning_encodes_its_captions_inside_autocast_and_draws_its_sample_grid(home, mia, bf16_on_the_cpu):
    # The trained embedding matrix is fp32 in a bf16 text encoder: outside autocast this is "mixed dtype".
    train_identity(home, "Mia", "pivotal", overrides=TWO_STEPS, show_progress=False)
    samples = registry.character_dir(home, "Mia") / "samples"
    assert (samples / "step-000001.png").exists() and (samples / "final.png").exists()


def test_sdxl_dreambooth_in_bf16_weights_with_adafactor_fused_into_the_backward_pass(
    home, tiny_sdxl, sample_photos, bf16_on_the_cpu
):
    update_config(home, {"model": str(tiny_sdxl)})
    registry.add_character(home, "Mia", sample_photos, load_tokenizer(str(tiny_sdxl), home))
    policy = {"optimizer": "adafactor", "fused_backward": True, "full_bf16": True, "learning_rate": 1e-3}
    metadata = trained_in_bf16(home, "dreambooth", policy)
    assert metadata.config.full_bf16 and metadata.config.fused_backward
    identity = registry.character_dir(home, "Mia") / "identity"
    trained = load_file(identity / "unet" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in trained.values()} == {torch.float32}  # the CPU's drawing dtype, not bf16
    base = load_file(tiny_sdxl / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(trained[key], base[key].float()) for key in base)  # the fused steps updated it
