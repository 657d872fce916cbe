"""The data root's settings: `storybook config`, precedence flag > config.json > default, and their users."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from storybook import models
from storybook.cli import app
from storybook.config import config_path, configured_adapter, configured_model, load_config
from storybook.errors import ModelError
from storybook.models import TINY_MODEL_FOLDER
from storybook.render.configure import update_config
from storybook.render.renderer import Renderer
from storybook.story.stage import StoryRequest, write_story
from storybook.tiny_model import build_tokenizer
from storybook.training.personalize import build_identity

runner = CliRunner()


def cli(home, *args):
    return runner.invoke(app, ["--home", str(home), *args])


def test_config_sets_shows_and_unsets_the_data_roots_settings(home):
    result = cli(home, "config", "--model", "tiny", "--device", "cpu", "--dtype", "bf16")
    assert result.exit_code == 0, result.output
    assert json.loads(config_path(home).read_text()) == {"model": "tiny", "device": "cpu", "dtype": "bf16"}
    shown = cli(home, "config").output
    assert "dtype" in shown and "bf16" in shown and "config.json" in shown
    assert cli(home, "config", "--unset", "dtype").exit_code == 0
    assert load_config(home).dtype is None and load_config(home).device == "cpu"
    assert "fp16 on a GPU" in cli(home, "config").output  # back to the default, and said so


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--device", "gpu"], "not a device"),
        (["--device", "cuda:\u0663"], "not a device"),
        (["--dtype", "fp8"], "fp8"),
        (["--ip-adapter-weight", "../../secret.safetensors"], "not a path inside its folder"),
        (["--image-encoder", "models/a\u2028b"], "one line"),
        (["--model", "/no/such/folder"], "not a diffusers pipeline folder"),
        (["--model", "someone/not-downloaded"], "hf download someone/not-downloaded"),
        (["--upscaler", "/" + "x" * 300], "not a usable path"),
        (["--unset", "colour"], "no such setting"),
        (["--device", "cpu", "--unset", "device"], "both set and unset"),
    ],
)
def test_a_bad_setting_is_refused_with_what_to_do_and_nothing_changes(home, args, said):
    update_config(home, {"model": "tiny"})
    before = config_path(home).read_bytes()
    result = cli(home, "config", *args)
    assert result.exit_code != 0 and said in result.output.replace("\n", " ")
    assert config_path(home).read_bytes() == before


@pytest.fixture
def wrong_kinds(home, tiny_ip_adapter, tmp_path) -> dict:
    """Folders that are there but of the wrong kind for some setting: a base model, a text encoder with an image
    processor, an IP-Adapter whose weights file is a UNet's and whose image encoder is a text encoder, an image-to-
    image pipeline."""
    tiny = TINY_MODEL_FOLDER
    text_encoder = tmp_path / "text-encoder"
    shutil.copytree(tiny / "text_encoder", text_encoder)
    (text_encoder / "preprocessor_config.json").write_text('{"image_processor_type": "CLIPImageProcessor"}')
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_ip_adapter.source, adapter)
    shutil.copytree(tiny / "text_encoder", adapter / "text_encoder")
    shutil.copy(tiny / "unet" / "diffusion_pytorch_model.safetensors", adapter / "unet.safetensors")
    refiner = tmp_path / "refiner"
    refiner.mkdir()
    (refiner / "model_index.json").write_text('{"_class_name": "StableDiffusionXLImg2ImgPipeline"}')
    return {"tiny": str(tiny), "text encoder": str(text_encoder), "adapter": str(adapter), "refiner": str(refiner)}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--safety-checker", "text encoder"], "is not a safety checker: its config.json describes CLIPTextModel"),
        (["--ip-adapter", "tiny"], "ip-adapter_sd15.safetensors are missing: give the file with --ip-adapter-weight"),
        (["--ip-adapter", "adapter", "--ip-adapter-weight", "unet.safetensors"], "is not a basic or plus IP-Adapter"),
        (["--ip-adapter", "adapter", "--image-encoder", "text_encoder"], "describes CLIPTextModel, not a CLIPVision"),
        (["--upscaler", "tiny"], "is a StableDiffusionPipeline, not an x4 upscaler (StableDiffusionUpscalePipeline"),
        (["--model", "refiner"], "is a StableDiffusionXLImg2ImgPipeline; storybook draws pages from their prompts"),
    ],
    ids=["checker", "adapter-model", "adapter-weight", "adapter-encoder", "upscaler", "model"],
)
def test_a_setting_of_the_wrong_kind_is_refused_when_it_is_saved(home, wrong_kinds, args, said):
    update_config(home, {"model": "tiny"})
    before = config_path(home).read_bytes()
    result = cli(home, "config", *[wrong_kinds.get(arg, arg) for arg in args])
    assert result.exit_code == 1 and said in result.stderr and len(result.stderr.splitlines()) == 1, result.output
    assert config_path(home).read_bytes() == before


def test_local_folders_are_kept_absolute_and_storybook_mini_names_its_own_adapter(home, tmp_path, monkeypatch):
    from storybook.config import MINI_ADAPTER_SOURCE

    (tmp_path / "upscaler").mkdir()
    (tmp_path / "upscaler" / "model_index.json").write_text('{"_class_name": "StableDiffusionUpscalePipeline"}')
    monkeypatch.chdir(tmp_path)
    update_config(home, {"upscaler": "upscaler", "ip_adapter": "storybook-mini", "model": "tiny"})
    assert load_config(home).upscaler == str(tmp_path / "upscaler") and load_config(home).model == "tiny"
    assert configured_adapter(home) == MINI_ADAPTER_SOURCE


def test_a_damaged_config_file_is_named_with_how_to_mend_it(home):
    config_path(home).write_text('{"model": "tiny", "colour": "red"}')
    result = cli(home, "config")
    assert result.exit_code == 1 and "config.json cannot be read" in result.output.replace("\n", "")
    with pytest.raises(ModelError, match="colour"):
        configured_model(home)


def test_config_beats_the_environment_and_a_flag_beats_config(home, monkeypatch):
    monkeypatch.setenv("STORYBOOK_MODEL", "storybook-mini")
    assert configured_model(home) == "storybook-mini"
    update_config(home, {"model": "tiny", "dtype": "bf16"})
    assert configured_model(home) == "tiny"
    assert Renderer(home, "tiny").dtype == torch.bfloat16  # config.json's dtype where no flag names one
    assert Renderer(home, "tiny", dtype="fp32").dtype == torch.float32  # the flag wins


def test_character_add_chooses_the_token_with_the_configured_models_tokenizer(home, sample_photos, monkeypatch):
    asked = []

    def recorded_tokenizer(model, where):
        asked.append(model)
        return build_tokenizer()

    monkeypatch.setattr(models, "load_tokenizer", recorded_tokenizer)
    update_config(home, {"model": "storybook-mini"})
    result = cli(home, "character", "add", "Mia", "--photos", *map(str, sample_photos))
    assert result.exit_code == 0, result.output
    assert asked == ["storybook-mini"]
    cli(home, "character", "add", "Leo", "--photos", *map(str, sample_photos), "--model", "tiny")
    assert asked == ["storybook-mini", "tiny"]  # --model wins


def test_new_books_are_drawn_with_the_configured_model(family_home):
    update_config(family_home, {"model": "storybook-mini"})
    request = StoryRequest(child="Mia", characters=["Mia"], theme="a day at the beach", pages=8, seed=1)
    _, book = write_story(family_home, request, "offline")
    assert book.render.model == "storybook-mini"


def test_an_image_prompt_uses_the_configured_ip_adapter(home, sample_photos, tiny_ip_adapter):
    from storybook import registry

    registry.add_character(home, "Mia", sample_photos, build_tokenizer())
    with pytest.raises(ModelError, match="has no IP-Adapter of its own"):
        build_identity(home, "Mia", "ip-adapter")  # the tiny model ships none
    update_config(home, {"ip_adapter": tiny_ip_adapter.source})
    assert configured_adapter(home) == tiny_ip_adapter  # h94's file layout where the paths are not set
    _, record = build_identity(home, "Mia", "ip-adapter")
    assert record.adapter == tiny_ip_adapter
    update_config(home, {"model": "storybook-mini"})  # the configured adapter serves the configured model only
    with pytest.raises(ModelError, match="has no IP-Adapter of its own"):
        build_identity(home, "Mia", "ip-adapter", "tiny")


def test_export_uses_the_configured_upscaler(drawn_book, tmp_path):
    folder, home = drawn_book, drawn_book.parent.parent
    update_config(home, {"upscaler": str(tmp_path / "my-upscaler")})
    result = cli(home, "export", str(folder), "--out", str(tmp_path / "book.pdf"), "--upscaler", "x4")
    assert result.exit_code == 1 and "my-upscaler" in result.output  # looked for where config.json said


def test_adapter_file_flags_without_the_adapter_are_refused(home):
    result = cli(home, "character", "train", "Mia", "--method", "ip-adapter", "--image-encoder", "encoder")
    assert result.exit_code == 1 and "give it too" in result.output


def test_the_cards_memory_is_a_setting_the_memory_plans_read(tmp_path):
    from storybook.doctor import doctor_report

    assert cli(tmp_path, "config", "--gpu-memory", "12").exit_code == 0
    assert load_config(tmp_path).gpu_memory == 12.0 and "12.0" in cli(tmp_path, "config").output
    assert "planning for a 12.0 GiB card" in doctor_report(tmp_path)[0]
    refused = cli(tmp_path, "config", "--gpu-memory", "-1")
    assert refused.exit_code != 0 and load_config(tmp_path).gpu_memory == 12.0
