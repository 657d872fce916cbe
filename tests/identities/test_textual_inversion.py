"""Textual Inversion on the tiny model: the identifier learns the photos, the class noun is untouched, and the A1111
file draws what the diffusers file draws."""

import os
import shutil
import signal

import numpy as np
import pytest
import torch
from diffusers.training_utils import cast_training_params
from safetensors.torch import load_file

from storybook import registry
from storybook.errors import TrainingError, TrainingInterrupted
from storybook.identities import load_identity, unload_identity
from storybook.identities.record import read_identity
from storybook.identities.textual_inversion import EMBEDS_FILE, train_identifier_embeddings
from storybook.identities.training_config import TrainingConfig
from storybook.training.loop import train_identity
from tests.training.pictures import colour_distance, fresh_pipeline, photo_colour, render

pytestmark = pytest.mark.slow


def test_the_identifier_learns_the_photos_and_the_a1111_file_draws_the_same(home, mia):
    before = render(fresh_pipeline(home), mia.instance_prompt)
    metadata = train_identity(home, "Mia", "textual-inversion", overrides={"num_vectors": 2}, show_progress=False)
    assert metadata.photo_loss_after < 0.97 * metadata.photo_loss_before
    folder = registry.character_dir(home, "Mia") / "identity"
    a1111_file = folder / f"{mia.token}.pt"
    assert read_identity(folder).files == [EMBEDS_FILE, a1111_file.name]
    assert load_file(folder / EMBEDS_FILE)[mia.token].shape == (2, 32)  # two vectors of the tiny text encoder's width

    pipeline = fresh_pipeline(home)
    load_identity(pipeline, folder, adapter_name="mia")
    assert pipeline.tokenizer.tokenize(mia.token) == [mia.token]  # its own token now
    after = render(pipeline, mia.instance_prompt)
    # The identity changes the pictures (its photo loss fell above). On the committed tiny model, 60 steps do not move
    # these three pictures' mean colour toward the photos' (LoRA and pivotal tuning do): see the closing note.
    assert np.abs(after - before).mean() > 0.01
    class_only = f"a photo of {mia.class_noun}"
    np.testing.assert_array_equal(render(pipeline, class_only), render(fresh_pipeline(home), class_only))

    a1111 = torch.load(a1111_file, weights_only=True)  # plain tensors and numbers: no code runs on load
    assert a1111["string_to_param"]["*"].shape == (2, 32) and a1111["name"] == mia.token
    assert a1111["step"] == metadata.steps_done and a1111["sd_checkpoint_name"] == "tiny"
    webui = fresh_pipeline(home)
    webui.load_textual_inversion(str(a1111_file))  # diffusers' A1111 path: the token is the file's name
    np.testing.assert_array_equal(render(webui, mia.instance_prompt), after)

    unload_identity(pipeline, metadata, "mia")
    np.testing.assert_array_equal(render(pipeline, mia.instance_prompt), before)


def test_an_interrupted_run_resumes_to_the_same_embedding(home, mia):
    settings = {"steps": 12, "checkpoint_every": 5}
    train_identity(home, "Mia", "textual-inversion", overrides=settings, show_progress=False)
    folder = registry.character_dir(home, "Mia")
    expected = load_file(folder / "identity" / EMBEDS_FILE)[mia.token]

    def stop_at_step_7(report):
        if report.step == 7:
            raise KeyboardInterrupt  # as Ctrl-C does between steps

    with pytest.raises(TrainingInterrupted):
        train_identity(
            home,
            "Mia",
            "textual-inversion",
            overrides=settings,
            restart=True,
            show_progress=False,
            on_step=stop_at_step_7,
        )
    train_identity(home, "Mia", "textual-inversion", resume=True, show_progress=False)
    torch.testing.assert_close(load_file(folder / "identity" / EMBEDS_FILE)[mia.token], expected)


def test_an_identifier_the_tokenizer_already_has_is_refused_before_training(home, mia):
    character = registry.load_character(home, "Mia")
    registry.save_character(home, character.model_copy(update={"token": "bedr"}))
    with pytest.raises(TrainingError, match="already a word of this model's tokenizer"):
        train_identity(home, "Mia", "textual-inversion", show_progress=False)


def test_pivotal_tuning_trains_the_embeddings_and_a_lora_and_loads_both(home, mia):
    before = render(fresh_pipeline(home), mia.instance_prompt)
    metadata = train_identity(
        home, "Mia", "pivotal", overrides={"num_class_images": 4, "class_image_steps": 4}, show_progress=False
    )
    assert metadata.photo_loss_after < 0.9 * metadata.photo_loss_before
    folder = registry.character_dir(home, "Mia") / "identity"
    assert metadata.files == [EMBEDS_FILE, f"{mia.token}.pt", "pytorch_lora_weights.safetensors"]

    pipeline = fresh_pipeline(home)
    load_identity(pipeline, folder, adapter_name="mia")
    assert pipeline.tokenizer.tokenize(mia.token) == [mia.token] and "mia" in pipeline.unet.peft_config
    after = render(pipeline, mia.instance_prompt)
    target = photo_colour(home, mia)
    assert colour_distance(after, target) < colour_distance(before, target)
    pipeline.disable_lora()  # the embeddings alone differ from the base, and from both together
    embeddings_only = render(pipeline, mia.instance_prompt)
    assert not np.allclose(embeddings_only, before, atol=1e-3) and not np.allclose(embeddings_only, after, atol=1e-3)
    unload_identity(pipeline, metadata, "mia")
    np.testing.assert_array_equal(render(pipeline, mia.instance_prompt), before)


def test_staged_pivotal_tuning_learns_the_embeddings_first_then_the_lora_and_resumes_across_stages(home, mia):
    settings = {"num_class_images": 4, "class_image_steps": 4, "steps": 12, "checkpoint_every": 3}
    staged = {**settings, "embedding_steps": 6, "embedding_learning_rate": 5e-2}
    folder = registry.character_dir(home, "Mia")
    stopped_at = {}

    def ctrl_c_at(step):
        def on_step(report):
            if report.step == step:
                os.kill(os.getpid(), signal.SIGINT)

        return on_step

    with pytest.raises(TrainingInterrupted):  # stop at the end of the first stage and look at the checkpoint
        train_identity(home, "Mia", "pivotal", overrides=staged, show_progress=False, on_step=ctrl_c_at(6))
    weights = load_file(folder / "checkpoints" / "step-000006" / "trainable.safetensors")
    lora_b = [value for key, value in weights.items() if "lora_B" in key]
    assert lora_b and all(not value.any() for value in lora_b)  # the LoRA has not moved: its B matrices are zero
    optimizer = torch.load(folder / "checkpoints" / "step-000006" / "optimizer.pt", weights_only=True)
    assert sorted(group["lr"] for group in optimizer["param_groups"]) == [5e-3, 5e-2]  # the LoRA's, the embeddings'
    stopped_at["embedding"] = weights["text_encoder.embeddings.token_embedding.weight"][-1].clone()

    resumed = train_identity(home, "Mia", "pivotal", resume=True, show_progress=False)  # across the stage change
    shutil.rmtree(folder / "identity")
    unbroken = train_identity(home, "Mia", "pivotal", overrides=staged, show_progress=False)
    assert resumed.loss_history == pytest.approx(unbroken.loss_history, rel=1e-4)
    lora = load_file(folder / "identity" / "pytorch_lora_weights.safetensors")
    assert any(value.any() for key, value in lora.items() if "lora_B" in key)  # the second stage trained the LoRA
    learned = load_file(folder / "identity" / EMBEDS_FILE)[mia.token][0]
    assert not torch.equal(learned, stopped_at["embedding"])  # ...and the embeddings went on learning beside it
    with pytest.raises(TrainingError, match="embedding_steps .* pivotal tuning only"):
        train_identity(home, "Mia", "lora", overrides={"embedding_steps": 3}, show_progress=False)
    with pytest.raises(TrainingError, match="must leave steps for the LoRA"):
        train_identity(home, "Mia", "pivotal", overrides={"steps": 5, "embedding_steps": 5}, show_progress=False)


def test_the_other_rows_are_restored_when_the_trained_matrix_is_cast_to_fp32(home, mia):
    # Under mixed precision the frozen text encoder runs in half precision and the trained matrix is cast back to fp32.
    pipeline = fresh_pipeline(home)
    pipeline.text_encoder.to(torch.bfloat16)
    config = TrainingConfig(method="pivotal", steps=1, learning_rate=1e-3)
    _, restore = train_identifier_embeddings(pipeline, mia, config)
    cast_training_params([pipeline.text_encoder], dtype=torch.float32)
    weight = pipeline.text_encoder.get_input_embeddings().weight
    before = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)  # what an optimiser step with weight decay does to every row
    restore()
    new_id = pipeline.tokenizer.convert_tokens_to_ids(mia.token)
    others = torch.arange(len(weight)) != new_id
    assert torch.equal(weight[others], before[others]) and torch.equal(weight[new_id], before[new_id] + 1)
    with pytest.raises(TrainingError, match="captions must name it"):
        train_identity(home, "Mia", "textual-inversion", overrides={"captions": "class"}, show_progress=False)
