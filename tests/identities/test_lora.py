"""LoRA identities in the formats other tools read: the kohya file draws what the diffusers file draws."""

import numpy as np
import pytest

from storybook import registry
from storybook.identities.lora import KOHYA_FILE, LORA_FILE
from storybook.training.loop import train_identity
from tests.training.pictures import fresh_pipeline, render

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_the_kohya_file_loads_into_a_fresh_pipeline_and_draws_the_same_pictures(home, mia, train_text_encoder):
    settings = {"steps": 8, "num_class_images": 4, "class_image_steps": 4, "train_text_encoder": train_text_encoder}
    train_identity(home, "Mia", "lora", overrides=settings, export_kohya=True, show_progress=False)
    folder = registry.character_dir(home, "Mia") / "identity"

    pictures = {}
    for weight_name in (LORA_FILE, KOHYA_FILE):
        pipeline = fresh_pipeline(home)
        pipeline.load_lora_weights(folder, weight_name=weight_name, adapter_name="mia")
        assert ("mia" in getattr(pipeline.text_encoder, "peft_config", {})) == train_text_encoder
        pictures[weight_name] = render(pipeline, mia.instance_prompt)
    assert not np.allclose(pictures[LORA_FILE], render(fresh_pipeline(home), mia.instance_prompt), atol=1e-3)
    np.testing.assert_allclose(pictures[KOHYA_FILE], pictures[LORA_FILE], atol=1e-5)
