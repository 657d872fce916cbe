"""DreamBooth-LoRA: low-rank adapters on the UNet's attention (and optionally its convolutions and the text encoder),
the base weights frozen. Saved in diffusers' format (`load_lora_weights` reads it as is), optionally also with
kohya's key names for A1111 and ComfyUI; loaded as a named adapter, switched per page."""

import warnings
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from storybook.registry import Character
from storybook.training.config import TrainingConfig
from storybook.training.identity import IdentityMetadata
from storybook.training.methods.base import MethodPart, SaveRequest, Trainable, freeze

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# With `lora_convolutions`: the ResNets' 3x3 convolutions and the transformers' projections and feed-forward too, where
# a small UNet keeps most of its weights (kohya's LoCon); diffusers and A1111 load these keys as well.
UNET_CONV_TARGETS = ["conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

# Published practice: diffusers' train_dreambooth_lora.py README (lr 1e-4, ~500-1000 steps). The tiny model learns in
# a minute on a CPU: higher rates, bigger batches, a few cheap class images. storybook-mini, measured with the
# consistency lab (README, "Consistency lab"): the tiny model's rate spoils its pictures, and a LoRA on attention alone
# (a tenth of this UNet's weights) learns nothing of the photos, so it also adapts the convolutions.
DEFAULTS = {
    "real": {"steps": 800, "learning_rate": 1e-4, "rank": 8, "num_class_images": 100, "checkpoint_every": 100},
    "tiny": {
        "steps": 60,
        "learning_rate": 5e-3,
        "rank": 4,
        "batch_size": 4,
        "num_class_images": 8,
        "class_image_steps": 10,
        "checkpoint_every": 20,
    },
    "mini": {
        "steps": 600,
        "learning_rate": 5e-4,
        "rank": 8,
        "lora_convolutions": True,
        "batch_size": 4,
        "num_class_images": 24,
        "class_image_steps": 20,
        "checkpoint_every": 100,
    },
}


def prepare(pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, dtype: torch.dtype) -> Trainable:
    """Freeze the base weights (in `dtype`) and add the adapters that train: rank `config.rank`, alpha = rank, as in
    diffusers' train_dreambooth_lora.py."""
    freeze(pipeline.vae, dtype)
    freeze(pipeline.unet, dtype)
    freeze(pipeline.text_encoder, None if config.train_text_encoder else dtype)
    targets = UNET_TARGETS + (UNET_CONV_TARGETS if config.lora_convolutions else [])
    adapter = LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian", target_modules=targets)
    pipeline.unet.add_adapter(adapter)
    if config.train_text_encoder:
        pipeline.text_encoder.add_adapter(
            LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian", target_modules=TEXT_TARGETS)
        )
    return Trainable(text_changes=config.train_text_encoder)


def save(
    folder: Path, pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, request: SaveRequest
) -> list[str]:
    """Write the LoRA weights of the UNet (and the text encoder when it was trained) to `folder`, in diffusers' format
    and, when asked, kohya's; return the file names."""
    # peft's own key names (`lora_A` / `lora_B`) for every layer: converting them to diffusers' older names renames
    # the attention layers only, and a file that mixes both loses its attention layers when diffusers loads it.
    unet, text_encoder = pipeline.unet, pipeline.text_encoder if config.train_text_encoder else None
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
    if not request.export_kohya:
        return [LORA_FILE]
    save_file(kohya_state_dict(unet_layers, text_layers), folder / KOHYA_FILE)
    return [LORA_FILE, KOHYA_FILE]


def kohya_state_dict(
    unet_layers: dict[str, torch.Tensor], text_layers: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """peft-format LoRA layers of the UNet and text encoder under kohya's names (`lora_unet_…`, `lora_te_…`,
    `lora_down`/`lora_up` with an `alpha` each), as A1111 and ComfyUI read them."""
    peft_state = {f"unet.{key}": value for key, value in unet_layers.items()}
    peft_state |= {f"text_encoder.{key}": value for key, value in (text_layers or {}).items()}
    kohya_state = convert_state_dict_to_kohya(peft_state)
    # diffusers names the text encoder `lora_te1_` (SDXL's first encoder); SD 1.x/2.x LoRAs use `lora_te_`.
    return {key.replace("lora_te1_", "lora_te_", 1): value.contiguous() for key, value in kohya_state.items()}


def lost_attention_layers(lora_file: Path) -> bool:
    """Whether `lora_file` mixes diffusers' older attention key names with peft's (what storybook wrote for a LoRA
    on convolutions before): diffusers then loads the convolutions and drops the attention layers."""
    with safe_open(lora_file, "pt") as weights:
        keys = list(weights.keys())
    return any(".lora.down." in key for key in keys) and any(".lora_A." in key for key in keys)


def load(pipeline: DiffusionPipeline, folder: Path, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Load the LoRA in `folder` as adapter `adapter_name` (off until the renderer sets it)."""
    if lost_attention_layers(folder / LORA_FILE):
        warnings.warn(
            f"{folder / LORA_FILE} was saved by an older storybook in a form whose attention layers do not load: "
            f"train {metadata.character} again (`storybook character train {metadata.character} --restart`) to "
            "draw with all of them.",
            stacklevel=1,
        )
    pipeline.load_lora_weights(folder, weight_name=LORA_FILE, adapter_name=adapter_name)


def unload(pipeline: DiffusionPipeline, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Remove adapter `adapter_name` from the pipeline."""
    pipeline.delete_adapters(adapter_name)


PART = MethodPart("lora", DEFAULTS, prepare, save, load, unload, lora_adapter=True)
