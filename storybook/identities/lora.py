"""DreamBooth-LoRA: low-rank adapters on the UNet's attention (and optionally its convolutions and the text encoder),
the base weights frozen. Saved in diffusers' format (`load_lora_weights` reads it as is), optionally also with
kohya's key names for A1111 and ComfyUI; loaded as a named adapter, switched per page."""

import warnings
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from storybook.identities.base import MethodPart, ModelShape, SaveRequest, Trainable, freeze
from storybook.identities.families import pipeline_family, text_encoders
from storybook.identities.record import IdentityMetadata
from storybook.identities.training_config import TrainingConfig
from storybook.registry import Character

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# With `lora_convolutions`: the ResNets' 3x3 convolutions and the transformers' projections and feed-forward too, where
# a small UNet keeps most of its weights (kohya's LoCon); diffusers and A1111 load these keys as well.
UNET_CONV_TARGETS = ["conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

# Published practice: diffusers' train_dreambooth_lora.py README (lr 1e-4, ~500-1000 steps); for SDXL its
# train_dreambooth_lora_sdxl.py README (lr 1e-4, 500 steps, batch 1 with 4 accumulated, rank 4). The tiny model
# learns in a minute on a CPU: higher rates, bigger batches, a few cheap class images. storybook-mini, measured with the
# consistency lab (docs/lab.md, "Consistency lab"): the tiny model's rate spoils its pictures, and a LoRA on
# attention alone (a tenth of this UNet's weights) learns nothing of the photos, so it also adapts the convolutions.
DEFAULTS = {
    "real": {"steps": 800, "learning_rate": 1e-4, "rank": 8, "num_class_images": 100, "checkpoint_every": 100},
    "xl": {
        "steps": 500,
        "learning_rate": 1e-4,
        "rank": 4,
        "grad_accum": 4,
        "num_class_images": 100,
        "checkpoint_every": 100,
        "gradient_checkpointing": True,  # 1024 px with prior preservation: two latents a step on 16-24 GB cards
    },
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
    diffusers' train_dreambooth_lora.py (and _sdxl.py, which adapts both of SDXL's text encoders)."""
    freeze(pipeline.unet, dtype)
    targets = UNET_TARGETS + (UNET_CONV_TARGETS if config.lora_convolutions else [])
    adapter = LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian", target_modules=targets)
    pipeline.unet.add_adapter(adapter)
    for text_encoder in text_encoders(pipeline).values():
        freeze(text_encoder, None if config.train_text_encoder else dtype)
        if config.train_text_encoder:
            text_encoder.add_adapter(
                LoraConfig(
                    r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian", target_modules=TEXT_TARGETS
                )
            )
    return Trainable(text_changes=config.train_text_encoder)


def save(
    folder: Path, pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, request: SaveRequest
) -> list[str]:
    """Write the LoRA weights of the UNet (and the text encoders when they were trained) to `folder`, in diffusers'
    format (by the pipeline class's own `save_lora_weights`) and, when asked, kohya's; return the file names."""
    # peft's own key names (`lora_A` / `lora_B`) for every layer: converting them to diffusers' older names renames
    # the attention layers only, and a file that mixes both loses its attention layers when diffusers loads it.
    trained = {"unet": pipeline.unet} | (text_encoders(pipeline) if config.train_text_encoder else {})
    layers = {name: get_peft_model_state_dict(module) for name, module in trained.items()}
    for name in layers.keys() - {"unet"}:
        # transformers 5 dropped CLIPTextModel's `text_model.` level; write it back so that A1111, ComfyUI and kohya
        # (and diffusers, which strips it again when loading) all find the layers.
        layers[name] = {
            key if key.startswith("text_model.") else f"text_model.{key}": v for key, v in layers[name].items()
        }
    type(pipeline).save_lora_weights(
        folder,
        weight_name=LORA_FILE,
        **{f"{name}_lora_layers": state for name, state in layers.items()},
        **{
            f"{name}_lora_adapter_metadata": module.peft_config["default"].to_dict() for name, module in trained.items()
        },
    )
    if not request.export_kohya:
        return [LORA_FILE]
    save_file(kohya_state_dict(layers, pipeline_family(pipeline).kohya_renames), folder / KOHYA_FILE)
    return [LORA_FILE, KOHYA_FILE]


def kohya_state_dict(layers: dict[str, dict[str, torch.Tensor]], renames: dict[str, str]) -> dict[str, torch.Tensor]:
    """peft-format LoRA layers by module ('unet', 'text_encoder', 'text_encoder_2') under kohya's names
    (`lora_unet_…`; `lora_te1_…`, `lora_te2_…` for SDXL's encoders, renamed by `renames` for the family, e.g. SD's
    `lora_te_…`; `lora_down`/`lora_up` with an `alpha` each), as A1111 and ComfyUI read them."""
    peft_state = {f"{module}.{key}": value for module, state in layers.items() for key, value in state.items()}
    kohya_state = {}
    for key, value in convert_state_dict_to_kohya(peft_state).items():
        for old, new in renames.items():
            key = key.replace(old, new, 1) if key.startswith(old) else key
        kohya_state[key] = value.contiguous()
    return kohya_state


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


def trained_parameters(shape: ModelShape, config: TrainingConfig) -> int:
    """The LoRA's parameters: rank x (in + out) of each adapted layer."""
    per_rank = shape.lora_per_rank + (shape.locon_per_rank if config.lora_convolutions else 0)
    return config.rank * (per_rank + (shape.text_lora_per_rank if config.train_text_encoder else 0))


def resident_text_bytes(shape: ModelShape, config: TrainingConfig, frozen: int) -> int:
    """The frozen text encoders stay on the card when their LoRA trains."""
    return sum(shape.text_encoders) * frozen if config.train_text_encoder else 0


PART = MethodPart(
    "lora",
    DEFAULTS,
    prepare,
    save,
    load,
    unload,
    lora_adapter=True,
    families=frozenset({"sd", "sdxl"}),
    trained_parameters=trained_parameters,
    resident_text_bytes=resident_text_bytes,
)
