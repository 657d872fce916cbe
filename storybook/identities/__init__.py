"""Identity methods as parts of one trainer: each module says what it trains, how it saves, how it loads into a
pipeline for rendering, and its default settings per model scale."""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from diffusers import DiffusionPipeline

from storybook.errors import ModelError
from storybook.identities import dreambooth, hypernetwork, lora, pivotal, textual_inversion
from storybook.identities.base import MethodPart
from storybook.identities.record import IdentityMetadata, read_identity
from storybook.identities.training_config import IdentityMethod, Method, TrainingConfig, checked_config, model_scale
from storybook.weights import check_finite, file_tensors

METHODS: dict[Method, MethodPart] = {
    part.name: part for part in (lora.PART, dreambooth.PART, textual_inversion.PART, hypernetwork.PART, pivotal.PART)
}


@dataclass(frozen=True)
class Recipe:
    """How an identity method (`storybook character train --method`) builds an identity: the weights it trains (a
    METHODS part; None: none) and whether an image prompt (IP-Adapter, image_prompt.py) is built beside them; what it
    is in a few words (the CLI's help) and in a parent's words (the app's choice)."""

    trained: Method | None
    image_prompt: bool
    summary: str
    label: str | None  # None: not offered in the app (an expert's method: the CLI only)


# Every identity method by name, in the order the app offers them: the one list the CLI, the app and the builder read.
RECIPES: dict[IdentityMethod, Recipe] = {
    "ip-adapter": Recipe(
        None, True, "the photos as an image prompt: ready in seconds, no training", "From the photos (ready in seconds)"
    ),
    "lora": Recipe("lora", False, "small file", "Trained on the photos (LoRA, minutes)"),
    "lora+ip-adapter": Recipe("lora", True, "both", "Both"),
    "textual-inversion": Recipe(
        "textual-inversion", False, "a new word's embedding, a few KB", "A new word for it (Textual Inversion, minutes)"
    ),
    "hypernetwork": Recipe("hypernetwork", False, "A1111's", "AUTOMATIC1111 hypernetwork (minutes)"),
    "pivotal": Recipe("pivotal", False, "Textual Inversion + LoRA", "A new word and a LoRA (pivotal tuning, minutes)"),
    "pivotal+ip-adapter": Recipe(
        "pivotal", True, "pivotal tuning and the image prompt", "Pivotal tuning and the photos (minutes)"
    ),
    "dreambooth": Recipe("dreambooth", False, "full fine-tune", None),
}
assert set(RECIPES) == set(get_args(IdentityMethod)), "IdentityMethod and RECIPES name the same methods"


def default_config(method: Method, unet_parameters: int, family: str = "sd") -> TrainingConfig:
    """The default settings of `method` for a UNet of `unet_parameters` in model `family` (see `model_scale`)."""
    return TrainingConfig(method=method, **METHODS[method].defaults[model_scale(unet_parameters, family)])


def resolve_config(
    method: Method, unet_parameters: int, overrides: dict | None = None, family: str = "sd"
) -> TrainingConfig:
    """`default_config` with `overrides` (e.g. {"steps": 200}) applied and checked.

    Raises TrainingError naming the bad setting (e.g. steps=0).
    """
    return checked_config(default_config(method, unet_parameters, family).model_dump() | (overrides or {}))


def load_identity(
    pipeline: DiffusionPipeline, folder: Path, adapter_name: str, base_fingerprint: str | None = None
) -> IdentityMetadata:
    """Load the trained identity in `folder` into `pipeline` the way its method loads (a LoRA as adapter
    `adapter_name`, DreamBooth by swapping weights, Textual Inversion as new token embeddings, a hypernetwork as hooks
    at strength 0 until the renderer sets it, pivotal tuning as embeddings and a LoRA).

    Raises ModelError when the identity was trained for a base model of another shape, or its files are damaged
    (cannot be read, or hold NaN or infinite weights); warns when it was trained on a different checkpoint of the same
    shape (it usually still works, less faithfully).
    """
    metadata = checked_identity(folder, pipeline.unet.config.cross_attention_dim, base_fingerprint)
    METHODS[metadata.method].load(pipeline, folder, metadata, adapter_name)
    return metadata


def checked_identity(folder: Path, cross_attention_dim: int, base_fingerprint: str | None = None) -> IdentityMetadata:
    """The identity in `folder`, checked against a base model whose UNet's cross-attention is `cross_attention_dim`
    (and whose UNet weights' fingerprint is `base_fingerprint`, when given).

    Raises ModelError when it was trained for a base model of another shape; warns when it was trained on a different
    checkpoint of the same shape (it usually still works, less faithfully).
    """
    metadata = read_identity(folder)
    check_finite(
        (pair for name in metadata.files for pair in file_tensors(folder / name)),
        f"The identity of {metadata.character}",
        f"Build it again with `storybook character train {metadata.character} --method {metadata.method}`.",
    )
    if metadata.cross_attention_dim != cross_attention_dim:
        raise ModelError(
            f"The identity of {metadata.character} was trained on {metadata.base_model} "
            f"(cross-attention {metadata.cross_attention_dim}), which does not fit this base model "
            f"(cross-attention {cross_attention_dim}). Train it again on this model."
        )
    if base_fingerprint and base_fingerprint != metadata.base_model_fingerprint:
        warnings.warn(
            f"{metadata.character} was trained on another checkpoint ({metadata.base_model}); likeness may suffer.",
            stacklevel=3,
        )
    return metadata


def unload_identity(pipeline: DiffusionPipeline, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Take an identity loaded by `load_identity` out of `pipeline` again."""
    METHODS[metadata.method].unload(pipeline, metadata, adapter_name)
