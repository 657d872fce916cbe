import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from storybook.errors import ModelError
from storybook.models import (
    MINI_MODEL_FOLDER,
    TINY_MODEL_FOLDER,
    load_pipeline,
    model_family,
    model_fingerprint,
    pick_dtype,
    resolve_model,
    unet_parameter_count,
)
from storybook.render.configure import update_config


def test_tiny_model_is_a_committed_diffusers_folder_loaded_by_from_pretrained_without_training(home):
    folder = TINY_MODEL_FOLDER
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]:
        assert (folder / part).is_dir()
    assert list((folder / "unet").glob("*.safetensors"))
    pipeline, path = load_pipeline("tiny", home)
    assert isinstance(pipeline, StableDiffusionPipeline) and path == str(folder)
    assert model_family(path) == "sd"
    assert not any(home.iterdir())  # nothing built or trained in the data root


def test_the_unets_size_is_read_without_its_weights(home):
    for model in ("tiny", "storybook-mini"):
        pipeline, model_path = load_pipeline(model, home)
        assert unet_parameter_count(model_path) == sum(p.numel() for p in pipeline.unet.parameters())
    with pytest.raises(ModelError, match="no unet/config.json"):
        unet_parameter_count("someone/not-downloaded")


def test_generation_is_deterministic_for_a_seed(home):
    pipeline, _ = load_pipeline("tiny", home)

    def image(seed):
        generator = torch.Generator("cpu").manual_seed(seed)
        return pipeline("a red picture", num_inference_steps=5, generator=generator, output_type="np").images[0]

    assert np.array_equal(image(3), image(3))
    assert not np.array_equal(image(3), image(4))


def test_missing_weights_give_an_actionable_error(home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as error:
        load_pipeline("nobody/no-such-model", home)
    assert "--model" in str(error.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="model_index.json"):
        resolve_model(str(empty), home)


def test_a_base_model_whose_weights_are_cut_off_is_named_damaged_not_missing(tmp_path):
    model = tmp_path / "mini"
    shutil.copytree(MINI_MODEL_FOLDER, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])  # a download or a copy cut off
    with pytest.raises(ModelError) as refused:
        load_pipeline(str(model), tmp_path, torch.device("cpu"))
    said = str(refused.value)
    assert "unet/diffusion_pytorch_model.safetensors cannot be read: it is cut off or damaged" in said
    assert "download it again" in said and "not in the Hugging Face cache" not in said


def test_other_pipelines_are_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelError, match="FluxPipeline"):
        model_family(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert model_family(str(tmp_path)) == "sdxl"
    # The SDXL refiner: refused from its model_index.json, before any weights load (the folder has none to load).
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    with pytest.raises(ModelError, match="StableDiffusionXLImg2ImgPipeline; .* not image-to-image"):
        load_pipeline(str(tmp_path), tmp_path)


def test_dtype_defaults_follow_the_device():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    with pytest.raises(ModelError):
        pick_dtype(torch.device("cpu"), "fp8")


def test_fingerprint_is_stable_and_cached(home):
    path = resolve_model("tiny", home)
    first = model_fingerprint(path, home)
    assert len(first) == 16 and model_fingerprint(path, home) == first
    assert (home / "cache" / "file-hashes.json").exists()


def test_fingerprint_counts_only_the_weights_loaded_and_reads_hub_blob_names(tmp_path, home):
    import hashlib
    import shutil

    model = tmp_path / "model"
    shutil.copytree(resolve_model("tiny", home), model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    before = model_fingerprint(str(model), home)
    assert before == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    (model / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"a variant downloaded beside")
    assert model_fingerprint(str(model), home) == before  # not loaded, so not counted

    # The hub cache: snapshots link to blobs named by their SHA-256, so nothing is read (the blob here is a stub).
    blobs, snapshot = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    shutil.copytree(model, snapshot)
    blob = blobs / ("7" * 64)
    blob.write_bytes(b"not hashed")
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").symlink_to(blob)
    assert model_fingerprint(str(snapshot), home) == "7" * 16

    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    index = model / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "../../secret.safetensors"}}')
    with pytest.raises(ModelError, match="outside unet/"):
        model_fingerprint(str(model), home)
    index.write_text("{ half")
    with pytest.raises(ModelError, match="damaged"):
        model_fingerprint(str(model), home)


def test_load_pipeline_loads_what_its_caller_hands_down_and_reads_no_config(home):
    update_config(home, {"dtype": "bf16"})  # the renderer reads it (tests/test_config.py); load_pipeline does not
    assert load_pipeline("tiny", home, torch.device("cpu"))[0].unet.dtype == torch.float32
    assert load_pipeline("tiny", home, torch.device("cpu"), torch.float16)[0].unet.dtype == torch.float16
