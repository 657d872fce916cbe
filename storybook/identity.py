"""Trained identities on disk: identity.json plus weights, saved after training and loaded into a base pipeline.

LoRA identities are `pytorch_lora_weights.safetensors` in diffusers' format (`load_lora_weights` reads them as is),
optionally also `pytorch_lora_weights_kohya.safetensors` for A1111/ComfyUI. DreamBooth identities are a full UNet
(and text encoder when trained) saved with `save_pretrained`, swapped into the base pipeline on load.
"""

import json
import warnings
from datetime import datetime
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
from peft.utils import get_peft_model_state_dict
from pydantic import BaseModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from storybook.errors import ModelError
from storybook.train_config import Method, TrainingConfig

SCHEMA_VERSION = 1
LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"


class IdentityMetadata(BaseModel):
    """identity.json: what was trained, from what, how, and how well."""

    schema_version: int = SCHEMA_VERSION
    character: str
    token: str
    class_noun: str
    method: Method
    base_model: str
    base_model_fingerprint: str
    cross_attention_dim: int
    resolution: int
    config: TrainingConfig
    steps_done: int
    final_loss: float
    loss_history: list[float]
    photo_loss_before: float  # fixed-noise denoising loss of the photos under their caption, before training
    photo_loss_after: float  # the same after training: lower means the identity was learned
    wall_time_s: float
    photo_sha256: list[str]
    files: list[str]
    created_at: datetime


def save_lora_identity(
    folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None, kohya: bool
) -> list[str]:
    """Write the LoRA weights of `unet` (and `text_encoder` when it was trained) to `folder`; return the file names."""
    # peft's own key names (`lora_A` / `lora_B`) for every layer: converting them to diffusers' older names renames
    # the attention layers only, and a file that mixes both loses its attention layers when diffusers loads it.
    unet_layers = get_peft_model_state_dict(unet)
    text_layers = None
    if text_encoder is not None:
        # transformers 5 dropped CLIP's `text_model.` level; write it back so that A1111, ComfyUI and kohya (and
        # diffusers, which strips it again when loading) all find the layers.
        text_state = get_peft_model_state_dict(text_encoder)
        text_layers = {
            key if key.startswith("text_model.") else f"text_model.{key}": v for key, v in text_state.items()
        }
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=text_layers,
        weight_name=LORA_FILE,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict() if text_encoder else None,
    )
    files = [LORA_FILE]
    if kohya:
        export_kohya(folder / LORA_FILE, folder / KOHYA_FILE)
        files.append(KOHYA_FILE)
    return files


def export_kohya(lora_file: Path, kohya_file: Path) -> None:
    """Convert a diffusers- or peft-format LoRA file to kohya's key names (`lora_unet_…`, `lora_te_…`) used by A1111
    and ComfyUI."""
    peft_state = convert_all_state_dict_to_peft(load_file(lora_file))
    kohya_state = convert_state_dict_to_kohya(peft_state)
    # diffusers names the text encoder `lora_te1_` (SDXL's first encoder); SD 1.x/2.x LoRAs use `lora_te_`.
    kohya_state = {key.replace("lora_te1_", "lora_te_", 1): value.contiguous() for key, value in kohya_state.items()}
    save_file(kohya_state, kohya_file)


def save_dreambooth_identity(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> list[str]:
    """Write the fine-tuned UNet (and text encoder) to `folder` in diffusers' layout; return the sub-folder names."""
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    files = ["unet"]
    if text_encoder is not None:
        text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        files.append("text_encoder")
    return files


def read_identity(folder: Path) -> IdentityMetadata:
    """Read identity.json from `folder`. Raises ModelError when the character has no trained identity."""
    record = folder / "identity.json"
    if not record.is_file():
        raise ModelError(f"No trained identity in {folder}: run `storybook character train NAME` first.")
    return IdentityMetadata.model_validate(json.loads(record.read_text()))


def lost_attention_layers(lora_file: Path) -> bool:
    """Whether `lora_file` mixes diffusers' older attention key names with peft's (what storybook wrote for a LoRA
    on convolutions before): diffusers then loads the convolutions and drops the attention layers."""
    with safe_open(lora_file, "pt") as weights:
        keys = list(weights.keys())
    return any(".lora.down." in key for key in keys) and any(".lora_A." in key for key in keys)


def load_identity(
    pipeline: DiffusionPipeline, folder: Path, adapter_name: str, base_fingerprint: str | None = None
) -> IdentityMetadata:
    """Load the identity in `folder` into `pipeline`: LoRA as the named adapter, DreamBooth by swapping weights.

    Raises ModelError when the identity was trained for a base model of another shape; warns when it was trained on
    a different checkpoint of the same shape (it usually still works, less faithfully).
    """
    metadata = read_identity(folder)
    if metadata.cross_attention_dim != pipeline.unet.config.cross_attention_dim:
        raise ModelError(
            f"The identity of {metadata.character} was trained on {metadata.base_model} "
            f"(cross-attention {metadata.cross_attention_dim}), which does not fit this base model "
            f"(cross-attention {pipeline.unet.config.cross_attention_dim}). Train it again on this model."
        )
    if base_fingerprint and base_fingerprint != metadata.base_model_fingerprint:
        warnings.warn(
            f"{metadata.character} was trained on another checkpoint ({metadata.base_model}); likeness may suffer.",
            stacklevel=2,
        )
    if metadata.method == "lora":
        if lost_attention_layers(folder / LORA_FILE):
            warnings.warn(
                f"{folder / LORA_FILE} was saved by an older storybook in a form whose attention layers do not load: "
                f"train {metadata.character} again (`storybook character train {metadata.character} --restart`) to "
                "draw with all of them.",
                stacklevel=1,
            )
        pipeline.load_lora_weights(folder, weight_name=LORA_FILE, adapter_name=adapter_name)
        return metadata
    dtype, device = pipeline.unet.dtype, pipeline.unet.device
    pipeline.unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype).to(device)
    if (folder / "text_encoder").is_dir():
        pipeline.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype).to(device)
    return metadata
