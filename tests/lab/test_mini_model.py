import json
import random

import pytest
import torch
from diffusers import DiffusionPipeline
from typer.testing import CliRunner

from storybook.cli import app
from storybook.errors import LabError
from storybook.lab import world
from storybook.lab.evaluator import load_evaluator
from storybook.lab.mini_model import (
    MiniRecipe,
    build_unet,
    check_recipe,
    denoising_loss,
    filler_words,
    mini_words,
    save_snapshot,
    train_mini,
    training_caption,
    warmup_stable_decay,
)
from storybook.models import MINI_MODEL, MINI_MODEL_FOLDER, load_pipeline
from storybook.story.checks import DEFAULT_NEGATIVE_PROMPT
from storybook.tiny_model import build_tokenizer


def test_every_caption_word_is_one_token_and_an_identifier_is_several_unseen_ones():
    tokenizer = build_tokenizer(mini_words(), whole_words=True)
    assert all(len(tokenizer.tokenize(word)) == 1 for word in mini_words())
    assert len(tokenizer.tokenize("zorv")) > 1


def test_varied_captions_take_the_story_form_and_carry_words_the_world_never_draws():
    rng, forms, fillers = random.Random(3), set(), 0
    signature_words = {*world.HAT_SHAPES, *world.HAT_COLOURS, *world.PATTERNS}
    for _ in range(400):
        scene = world.random_scene(rng, world.random_toddler(rng, held_out=False))
        text = training_caption(scene, rng)
        words = set(text.replace(",", " ").replace(";", " ").replace(":", " ").split())
        if not text or text == DEFAULT_NEGATIVE_PROMPT:
            continue
        forms.add("story" if ";" in text else "world")
        strangers = words - set(mini_words())
        fillers += bool(strangers)
        assert strangers <= set(filler_words()) and not strangers & signature_words
        assert scene.toddler.description in text or "shirt" not in words  # described whole (no filler inside), or not
    assert forms == {"story", "world"} and 120 < fillers < 280  # about half carry fillers
    tokenizer, caption_tokens = build_tokenizer(mini_words(), whole_words=True), {f"{w}</w>" for w in mini_words()}
    assert not any(caption_tokens & set(tokenizer.tokenize(word)) for word in filler_words())  # 'that': 't' + 'hat'
    assert "that" not in filler_words() and "sun" in filler_words()
    unvaried = random.Random(4)
    plain = {training_caption(scene, unvaried, varied=False) for _ in range(50)} - {"", DEFAULT_NEGATIVE_PROMPT}
    assert plain == {world.caption(scene), world.caption(scene, describe=False)}


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


def test_the_loss_weighs_the_toddlers_pixels_more_and_min_snr_weighs_clean_timesteps_less():
    target, covered = torch.zeros(2, 4, 16, 16), torch.zeros(2, 1, 16, 16)
    covered[:, :, 4:8, 4:8] = 1  # where the toddler is
    on_toddler, on_background = target.clone(), target.clone()
    on_toddler[:, :, 5, 5], on_background[:, :, 12, 12] = 1, 1  # the same error, in one place or the other
    snr = torch.tensor([0.5, 0.5])
    plain = MiniRecipe(part_weight=0.0, min_snr_gamma=None)
    parts = MiniRecipe(part_weight=4.0, min_snr_gamma=None)
    assert denoising_loss(on_toddler, target, snr, covered, plain) == denoising_loss(
        on_background, target, snr, covered, plain
    )
    assert denoising_loss(on_toddler, target, snr, covered, parts) > 2 * denoising_loss(
        on_background, target, snr, covered, parts
    )
    min_snr = MiniRecipe(part_weight=0.0, min_snr_gamma=5.0)
    clean, noisy = torch.tensor([50.0, 50.0]), torch.tensor([0.5, 0.5])
    assert denoising_loss(on_toddler, target, clean, covered, min_snr) < 0.5 * denoising_loss(
        on_toddler, target, noisy, covered, min_snr
    )


def test_the_hat_weight_weighs_the_hats_pixels_more_and_needs_a_dataset_that_knows_the_hat():
    target, covered = torch.zeros(1, 4, 16, 16), torch.zeros(1, 2, 16, 16)
    covered[:, 0, 2:10, 4:8] = 1  # the toddler
    covered[:, 1, 2:4, 4:8] = 1  # its hat
    on_hat, on_shirt = target.clone(), target.clone()
    on_hat[:, :, 3, 5], on_shirt[:, :, 8, 5] = 1, 1
    snr, parts = torch.tensor([0.5]), MiniRecipe(min_snr_gamma=None)
    hats = MiniRecipe(min_snr_gamma=None, hat_weight=8.0)
    assert denoising_loss(on_hat, target, snr, covered, parts) == denoising_loss(on_shirt, target, snr, covered, parts)
    assert denoising_loss(on_hat, target, snr, covered, hats) > 2 * denoising_loss(on_shirt, target, snr, covered, hats)
    with pytest.raises(LabError, match="no hat coverage"):
        denoising_loss(on_hat, target, snr, covered[:, :1], hats)


def test_the_learning_rate_holds_until_the_last_fifth_so_a_run_can_be_made_longer():
    assert warmup_stable_decay(0, 200, 1000) == 1 / 200
    assert warmup_stable_decay(700, 200, 1000) == warmup_stable_decay(700, 200, 5000) == 1.0
    assert warmup_stable_decay(999, 200, 1000) < 0.11


def test_a_run_resumes_only_with_the_recipe_it_started_with(tmp_path):
    options = {"dataset_size": 8, "batch_size": 2, "vae_from": MINI_MODEL_FOLDER, "progress": lambda message: None}
    train_mini(tmp_path / "out", tmp_path / "work", unet_steps=1, recipe=MiniRecipe(part_weight=1.0), **options)
    checkpoint = (tmp_path / "work" / "unet-checkpoint.pt").read_bytes()
    with pytest.raises(LabError, match="another recipe"):
        train_mini(tmp_path / "out", tmp_path / "work", unet_steps=2, recipe=MiniRecipe(), **options)
    assert (tmp_path / "work" / "unet-checkpoint.pt").read_bytes() == checkpoint
    assert not (tmp_path / "work" / "vae.safetensors").exists()  # the given VAE is used as it is


def test_a_recipe_saved_before_the_varied_captions_and_hat_weight_reads_as_trained_without_them(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text('{"resolution": 64, "heights": [0.72, 0.92], "part_weight": 4.0, "min_snr_gamma": 5.0}')
    check_recipe(path, MiniRecipe(varied_captions=False))  # the same run: it resumes
    with pytest.raises(LabError, match="another recipe"):
        check_recipe(path, MiniRecipe())  # the captions changed


def test_a_new_machine_goes_on_from_a_weights_only_snapshot(tmp_path):
    messages = []
    options = {"dataset_size": 8, "batch_size": 2, "vae_from": MINI_MODEL_FOLDER, "progress": messages.append}
    train_mini(tmp_path / "out", tmp_path / "work", unet_steps=2, **options)
    assert save_snapshot(tmp_path / "work", tmp_path / "snapshot") == 2
    files = sorted((tmp_path / "snapshot").iterdir())
    assert [path.name for path in files] == ["snapshot.json", "text_encoder.safetensors", "unet.safetensors"]
    assert sum(path.stat().st_size for path in files) < 15 * 2**20  # fp16 EMA weights only: git grows little
    train_mini(tmp_path / "out2", tmp_path / "new-work", unet_steps=3, snapshot=tmp_path / "snapshot", **options)
    assert any(message.startswith("resumed at step 2 from the snapshot") for message in messages)
    assert json.loads((tmp_path / "snapshot" / "snapshot.json").read_text())["step"] == 3  # rewritten as it goes
    with pytest.raises(LabError, match="another recipe"):
        train_mini(
            tmp_path / "out3",
            tmp_path / "other-work",
            unet_steps=3,
            snapshot=tmp_path / "snapshot",
            recipe=MiniRecipe(part_weight=1.0),
            **options,
        )
