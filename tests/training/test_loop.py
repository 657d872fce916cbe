"""Identity training on the tiny model: it learns, resumes exactly, and its artifacts load into fresh pipelines."""

import importlib.util
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from storybook import registry
from storybook.errors import TrainingError, TrainingInterrupted
from storybook.identities import load_identity
from storybook.identities.families import pipeline_family, sample_inputs_sd
from storybook.identities.lora import KOHYA_FILE, LORA_FILE
from storybook.identities.record import read_identity
from storybook.identities.training_config import checked_config
from storybook.models import TINY_MODEL_FOLDER
from storybook.tiny_model import build_tokenizer
from storybook.training import losses
from storybook.training.batches import fixed_noise_loss, photo_captions
from storybook.training.loop import save_samples, train_identity
from tests.training.pictures import fresh_pipeline, photo_colour, render

pytestmark = pytest.mark.slow
FAST = {"num_class_images": 4, "class_image_steps": 4, "checkpoint_every": 10}


def test_lora_learns_the_character_and_loads_into_a_fresh_pipeline(home, mia):
    before = render(fresh_pipeline(home), mia.instance_prompt)
    metadata = train_identity(home, "Mia", "lora", overrides=FAST, export_kohya=True, show_progress=False)

    assert metadata.photo_loss_after < 0.9 * metadata.photo_loss_before  # the photos' denoising loss fell

    pipeline = fresh_pipeline(home)
    identity = load_identity(pipeline, registry.character_dir(home, "Mia") / "identity", adapter_name="mia")
    assert identity.token == mia.token and identity.method == "lora"
    after = render(pipeline, mia.instance_prompt)
    assert not np.allclose(before, after, atol=1e-3)  # the LoRA changes the output
    target = photo_colour(home, mia)
    distance_before = np.abs(before.mean(axis=(1, 2)) - target).mean()
    distance_after = np.abs(after.mean(axis=(1, 2)) - target).mean()
    assert distance_after < distance_before  # ...toward the colours of the photos

    folder = registry.character_dir(home, "Mia")
    assert (folder / "samples" / "final.png").exists()
    assert not (folder / "checkpoints").exists()  # cleaned up after success
    kohya_keys = list(load_file(folder / "identity" / KOHYA_FILE))
    assert kohya_keys and all(key.startswith("lora_unet_") for key in kohya_keys)
    assert metadata.photo_sha256 == [p.sha256 for p in mia.photos]
    assert read_identity(folder / "identity").files == [LORA_FILE, KOHYA_FILE]


def test_lora_on_convolutions_saves_conv_weights_that_load_and_change_the_picture(home, mia):
    before = render(fresh_pipeline(home), mia.instance_prompt)
    overrides = {**FAST, "steps": 10, "lora_convolutions": True}
    train_identity(home, "Mia", "lora", overrides=overrides, export_kohya=True, show_progress=False)

    folder = registry.character_dir(home, "Mia") / "identity"
    assert any(".resnets.0.conv1.lora_A" in key for key in load_file(folder / LORA_FILE))
    assert any("_resnets_0_conv1.lora_down" in key for key in load_file(folder / KOHYA_FILE))
    pipeline = fresh_pipeline(home)
    load_identity(pipeline, folder, adapter_name="mia")
    assert "conv1" in str(pipeline.unet.peft_config["mia"].target_modules)
    trained_b = {name: p for name, p in pipeline.unet.named_parameters() if ".lora_B.mia." in name}
    assert any("attn2.to_k" in name for name in trained_b) and any("conv1" in name for name in trained_b)
    assert all(p.abs().sum() > 0 for p in trained_b.values())  # every layer loaded (lora_B starts at zero)
    assert not np.allclose(before, render(pipeline, mia.instance_prompt), atol=1e-3)


def test_interrupted_training_resumes_to_the_same_weights(home, mia):
    settings = {**FAST, "steps": 20, "checkpoint_every": 5}
    uninterrupted = train_identity(home, "Mia", "lora", overrides=settings, show_progress=False)
    folder = registry.character_dir(home, "Mia")
    expected = load_file(folder / "identity" / LORA_FILE)

    def ctrl_c_at_step_13(report):
        if report.step == 13:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: the loop stops at the end of this step

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_identity(home, "Mia", "lora", overrides=settings, show_progress=False, on_step=ctrl_c_at_step_13)
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-000013"]
    with pytest.raises(TrainingError, match="--resume"):  # a fresh run must not silently discard the checkpoint
        train_identity(home, "Mia", "lora", overrides=settings, show_progress=False)
    with pytest.raises(TrainingError, match=r"other settings were given: rank 8 \(the run has 4\)\. Leave them out"):
        train_identity(home, "Mia", "lora", overrides={**settings, "rank": 8}, resume=True, show_progress=False)
    with pytest.raises(TrainingError, match=r"Give --resume \(go on with the unfinished run\) or --restart"):
        train_identity(home, "Mia", "lora", resume=True, restart=True, show_progress=False)
    state_file = folder / "checkpoints" / "step-000013" / "state.json"
    state = state_file.read_text()
    for damage in ({"loss_history": [0.1] * 3}, {"photo_loss_before": "NaN"}, {"config": {"method": "lora"}}):
        state_file.write_text(json.dumps(json.loads(state) | damage))
        with pytest.raises(TrainingError, match="step-000013 is damaged .*start over with --restart"):
            train_identity(home, "Mia", "lora", resume=True, show_progress=False)
    state_file.write_text(state)

    # The printed resume command gives no settings: they come from the checkpoint (20 steps, not the default 60).
    resumed = train_identity(home, "Mia", "lora", resume=True, show_progress=False)
    assert resumed.loss_history == pytest.approx(uninterrupted.loss_history, rel=1e-4)
    weights = load_file(folder / "identity" / LORA_FILE)
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-6)


def test_each_photo_trains_under_its_own_caption_and_a_changed_caption_stops_a_resume(home, mia):
    mia = registry.set_photo_captions(home, "Mia", {1: "a little girl waving", 2: "a little girl sitting"})
    settings = {**FAST, "steps": 6, "checkpoint_every": 3, "prior_preservation": False, "photo_captions": True}
    bare = mia.instance_prompt
    assert photo_captions(
        mia, checked_config({"method": "hypernetwork", **settings, "learning_rate": 1e-3, "captions": "class"})
    )[:2] == ["a photo of toddler, a little girl waving", "a photo of toddler, a little girl sitting"]

    captioned = train_identity(home, "Mia", "lora", overrides=settings, show_progress=False)
    assert captioned.captions == [f"{bare}, a little girl waving", f"{bare}, a little girl sitting", *[bare] * 3]
    plain = train_identity(home, "Mia", "lora", overrides={**settings, "photo_captions": False}, show_progress=False)
    assert plain.captions == [bare] * 5
    assert plain.loss_history != captioned.loss_history  # the same draws, other captions: other losses

    def ctrl_c_at_step_3(report):
        if report.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train_identity(home, "Mia", "lora", overrides=settings, show_progress=False, on_step=ctrl_c_at_step_3)
    registry.set_photo_captions(home, "Mia", {2: "a little girl jumping"})
    with pytest.raises(TrainingError, match="captions of Mia's photos changed since step-000003"):
        train_identity(home, "Mia", "lora", resume=True, show_progress=False)
    registry.set_photo_captions(home, "Mia", {2: "a little girl sitting"})
    resumed = train_identity(home, "Mia", "lora", resume=True, show_progress=False)
    assert resumed.loss_history == pytest.approx(captioned.loss_history, rel=1e-4)


def test_a_base_model_with_nan_weights_is_named_before_any_training(home, mia, tmp_path):
    poisoned = tmp_path / "poisoned-tiny"
    shutil.copytree(TINY_MODEL_FOLDER, poisoned)
    unet = load_file(poisoned / "unet" / "diffusion_pytorch_model.safetensors")
    unet["conv_in.weight"].view(-1)[0] = float("nan")
    save_file(unet, poisoned / "unet" / "diffusion_pytorch_model.safetensors")
    quick = {**FAST, "prior_preservation": False, "num_class_images": 0}
    with pytest.raises(TrainingError, match="poisoned-tiny gives NaN or infinite values before any training"):
        train_identity(home, "Mia", "lora", str(poisoned), quick, show_progress=False)
    assert not (registry.character_dir(home, "Mia") / "identity").exists()


def test_resume_without_checkpoint_is_refused(home, mia):
    with pytest.raises(TrainingError, match="No checkpoint"):
        train_identity(home, "Mia", "lora", overrides=FAST, resume=True, show_progress=False)


def test_dreambooth_fine_tunes_the_unet_and_swaps_it_in(home, mia):
    base = fresh_pipeline(home)
    before = render(base, mia.instance_prompt)
    metadata = train_identity(home, "Mia", "dreambooth", overrides=FAST, show_progress=False)
    assert metadata.photo_loss_after < 0.9 * metadata.photo_loss_before

    pipeline = fresh_pipeline(home)
    load_identity(pipeline, registry.character_dir(home, "Mia") / "identity", adapter_name="mia")
    after = render(pipeline, mia.instance_prompt)
    target = photo_colour(home, mia)
    assert np.abs(after.mean(axis=(1, 2)) - target).mean() < np.abs(before.mean(axis=(1, 2)) - target).mean()


def test_class_images_are_cached_and_reused(home, mia, sample_photos):
    train_identity(home, "Mia", "lora", overrides={**FAST, "steps": 2}, show_progress=False)
    class_images = sorted((home / "cache" / "class-images").rglob("*.png"))
    assert len(class_images) == FAST["num_class_images"]
    stamps = [p.stat().st_mtime_ns for p in class_images]
    registry.add_character(home, "Leo", sample_photos[:3], build_tokenizer())
    train_identity(home, "Leo", "lora", overrides={**FAST, "steps": 2}, show_progress=False)
    assert [p.stat().st_mtime_ns for p in sorted((home / "cache" / "class-images").rglob("*.png"))] == stamps


def test_expert_flags_train_and_save_a_text_encoder_lora(home, mia):
    flags = {"steps": 4, "train_text_encoder": True, "grad_accum": 2, "snr_gamma": 5.0, "offset_noise": 0.1}
    metadata = train_identity(
        home, "Mia", "lora", overrides={**FAST, **flags, "cache_latents": False}, show_progress=False, export_kohya=True
    )
    assert metadata.config.train_text_encoder and len(metadata.loss_history) == 4
    folder = registry.character_dir(home, "Mia") / "identity"
    assert any(key.startswith("text_encoder.text_model.encoder.layers.") for key in load_file(folder / LORA_FILE))
    assert any(key.startswith("lora_te_text_model_encoder_layers_") for key in load_file(folder / KOHYA_FILE))
    pipeline = fresh_pipeline(home)
    load_identity(pipeline, folder, adapter_name="mia")
    assert "mia" in pipeline.text_encoder.peft_config  # the text part loaded too


def test_a_numbered_gpu_is_refused_with_how_to_choose_it(home, mia):
    with pytest.raises(TrainingError, match="CUDA_VISIBLE_DEVICES=1 and --device cuda"):
        train_identity(home, "Mia", "lora", device="cuda:1", show_progress=False)


def test_mixed_precision_on_the_cpu_is_refused_before_any_work(home, mia):
    with pytest.raises(TrainingError, match="GPU"):
        train_identity(home, "Mia", "lora", overrides={**FAST, "mixed_precision": "fp16"}, show_progress=False)
    assert not (home / "cache" / "class-images").exists()


def test_cuda_trains_in_mixed_precision_and_8_bit_adam_by_default_and_the_cpu_in_fp32(monkeypatch):
    from storybook.training.plan import default_mixed_precision, default_optimizer

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (default_mixed_precision(cpu), default_optimizer(cpu)) == ("no", "adamw")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # a T4, a V100
    assert default_mixed_precision(cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # an A100, an H100
    assert default_mixed_precision(cuda) == "bf16"
    installed = importlib.util.find_spec("bitsandbytes") is not None
    assert default_optimizer(cuda) == ("adamw-8bit" if installed else "adamw")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here")
def test_8_bit_adam_without_bitsandbytes_says_how_to_install_it_before_loading(home, mia, monkeypatch):
    monkeypatch.setattr("storybook.training.loop.load_pipeline", lambda *args, **kwargs: pytest.fail("loaded"))
    with pytest.raises(TrainingError, match=r"pip install 'storybook\[gpu\]'"):
        train_identity(home, "Mia", "lora", overrides={**FAST, "optimizer": "adamw-8bit"}, show_progress=False)


def test_settings_are_checked_before_loading_against_the_defaults_of_the_model_trained(home, mia, monkeypatch):
    class Loaded(Exception):
        pass

    def load_pipeline(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr("storybook.training.loop.load_pipeline", load_pipeline)
    staged = {"embedding_steps": 100}  # pivotal tuning trains 300 steps on storybook-mini, 60 on the tiny model
    with pytest.raises(Loaded):
        train_identity(home, "Mia", "pivotal", "storybook-mini", staged, show_progress=False)
    with pytest.raises(TrainingError, match=r"embedding_steps \(100\) must leave steps for the LoRA \(60\)"):
        train_identity(home, "Mia", "pivotal", "tiny", staged, show_progress=False)


def test_settings_that_cannot_train_are_refused_and_a_diverging_run_saves_nothing(home, mia, monkeypatch):
    for bad in (
        {"learning_rate": float("inf")},
        {"learning_rate": 50.0},
        {"snr_gamma": -1.0},
        {"offset_noise": float("nan")},
    ):
        with pytest.raises(TrainingError, match="Invalid training settings"):
            train_identity(home, "Mia", "lora", overrides={**FAST, **bad}, show_progress=False)
    assert not (home / "cache" / "class-images").exists()  # refused before any work

    real_loss, calls = losses.prior_preservation_loss, []

    def nan_from_step_8(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) >= 8 else loss

    monkeypatch.setattr(losses, "prior_preservation_loss", nan_from_step_8)
    with pytest.raises(TrainingError, match=r"diverged at step 8 .* the last good checkpoint \(step-000005\) is kept"):
        train_identity(home, "Mia", "lora", overrides={**FAST, "checkpoint_every": 5}, show_progress=False)
    folder = registry.character_dir(home, "Mia")
    assert not (folder / "identity").exists() and not any(folder.glob(".identity-building-*"))
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-000005"]


def test_frozen_parts_a_step_does_not_use_wait_on_the_cpu_and_the_cpu_has_no_memory_plan(home, mia):
    from storybook.training.loop import load_for_training
    from storybook.training.plan import plan_run

    for method, text_waits in (("lora", True), ("textual-inversion", False)):
        plan = plan_run(home, mia, method, None, None, {"prior_preservation": False}, False, False)
        assert plan.need is None and plan.switches == []  # no card to fit on the CPU
        loaded = load_for_training(home, mia, plan)
        assert loaded.parked_vae == [loaded.pipeline.vae]  # latents are cached
        assert (loaded.parked_text == [loaded.pipeline.text_encoder]) == text_waits  # Textual Inversion encodes


def test_the_sample_grid_shows_each_prompt_as_drawn_alone(tmp_path):
    pipeline = fresh_pipeline(tmp_path)
    prompts = ["a photo of zorv toddler", "zorv toddler at the beach", "zorv toddler in a garden"]
    inputs = [sample_inputs_sd(pipeline, prompt) for prompt in prompts]
    grid = save_samples(pipeline, inputs, tmp_path / "grid.png", lambda: torch.autocast("cpu", enabled=False), steps=4)

    drawn = np.asarray(Image.open(grid), dtype=np.int16)
    width = drawn.shape[1] // len(prompts)
    for seed, prompt in enumerate(inputs):  # one batch on the CPU, the same pictures as one at a time
        alone = pipeline(**prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(seed)).images[0]
        assert np.abs(drawn[:, seed * width : (seed + 1) * width] - np.asarray(alone, dtype=np.int16)).max() <= 2


def test_the_photo_loss_is_the_mean_over_its_timesteps_each_with_its_own_noise(home, mia):
    pipeline = fresh_pipeline(home)
    config = pipeline.unet.config
    latents = torch.randn(3, config.in_channels, config.sample_size, config.sample_size, generator=torch.Generator())
    conditioning = pipeline_family(pipeline).encode(pipeline, [mia.instance_prompt] * 3)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)  # the trainer's

    generator, losses_at = torch.Generator().manual_seed(0), []
    for timestep in torch.linspace(50, scheduler.config.num_train_timesteps - 50, 8).long():
        noise = torch.randn(latents.shape, generator=generator)
        t = timestep.repeat(3)
        with torch.no_grad():
            prediction = pipeline.unet(scheduler.add_noise(latents, noise, t), t, **conditioning.unet_inputs()).sample
        losses_at.append(torch.mean((prediction - losses.diffusion_target(scheduler, latents, noise, t)) ** 2).item())

    assert fixed_noise_loss(pipeline.unet, latents, conditioning, scheduler) == pytest.approx(np.mean(losses_at), 1e-4)
