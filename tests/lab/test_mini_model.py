import random

import pytest
import torch
from diffusers import DiffusionPipeline
from typer.testing import CliRunner

from storybook.cli import app
from storybook.lab import world
from storybook.lab.evaluator import load_evaluator
from storybook.lab.mini_model import build_unet, mini_words, train_mini
from storybook.models import MINI_MODEL, MINI_MODEL_FOLDER, load_pipeline
from storybook.tiny_model import build_tokenizer


def test_every_caption_word_is_one_token_and_an_identifier_is_several_unseen_ones():
    tokenizer = build_tokenizer(mini_words(), whole_words=True)
    assert all(len(tokenizer.tokenize(word)) == 1 for word in mini_words())
    assert len(tokenizer.tokenize("zorv")) > 1


def test_the_committed_weights_are_small_and_load_through_from_pretrained(tmp_path):
    size = sum(path.stat().st_size for path in MINI_MODEL_FOLDER.rglob("*") if path.is_file())
    assert size < 30 * 2**20
    pipeline, path = load_pipeline(MINI_MODEL, tmp_path)
    assert path == str(MINI_MODEL_FOLDER)
    assert pipeline.unet.dtype == torch.float32  # stored in fp16, run in fp32 on the CPU
    assert pipeline.unet.config.sample_size * pipeline.vae_scale_factor == 64


@pytest.mark.parametrize("setting", ["beach", "snow", "night", "forest"])
def test_storybook_mini_draws_the_setting_a_prompt_asks_for(tmp_path, setting):
    pipeline, _ = load_pipeline(MINI_MODEL, tmp_path)
    toddler = world.random_toddler(random.Random(setting), held_out=False)
    prompt = world.caption(world.random_scene(random.Random(1), toddler, setting))
    pictures = pipeline(
        [prompt] * 4,
        num_inference_steps=20,
        generator=[torch.Generator().manual_seed(seed) for seed in range(4)],
    ).images
    readings = load_evaluator().read(pictures)
    assert sum(reading["setting"] == setting for reading in readings) >= 3, readings


def test_training_runs_resume_and_write_a_loadable_pipeline(tmp_path):
    messages = []
    options = {
        "vae_steps": 2,
        "decoder_steps": 2,
        "dataset_size": 64,
        "batch_size": 4,
        "checkpoint_every": 2,
        "progress": messages.append,
    }
    train_mini(tmp_path / "out", tmp_path / "work", unet_steps=2, **options)
    train_mini(tmp_path / "out", tmp_path / "work", unet_steps=4, **options)
    assert "resumed at step 2" in messages
    assert sum("vae trained" in message for message in messages) == 1  # the VAE is trained once
    assert sum("decoder refined" in message for message in messages) == 1  # and its decoder refined once
    pipeline = DiffusionPipeline.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert list(pipeline.unet.config.block_out_channels) == list(build_unet().config.block_out_channels)
    assert pipeline("a toddler at the beach", num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal is for machines without it")
@pytest.mark.parametrize("command", ["train-mini", "train-adapter"])
def test_training_on_a_device_this_machine_lacks_says_so_and_writes_nothing(tmp_path, command):
    work, out = tmp_path / "work", ["--out", str(tmp_path / "out")]
    if command == "train-adapter":  # never the committed weights, whatever happens
        out += ["--adapter-out", str(tmp_path / "adapter"), "--base", str(tmp_path / "base")]
    result = CliRunner().invoke(app, ["lab", command, "--device", "cuda", "--work", str(work), *out])
    assert result.exit_code == 1
    assert " ".join(result.output.split()).startswith("Error: This machine has no cuda device: use --device cpu")
    assert not work.exists() and not (tmp_path / "out").exists()
