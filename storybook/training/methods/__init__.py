"""Identity methods as parts of one trainer: each module says what it trains, how it saves, how it loads into a
pipeline for rendering, and its default settings per model scale."""

import warnings
from pathlib import Path

from diffusers import DiffusionPipeline

from storybook.errors import ModelError
from storybook.training.config import Method, TrainingConfig, checked_config, model_scale
from storybook.training.identity import IdentityMetadata, read_identity
from storybook.training.methods import dreambooth, hypernetwork, lora, pivotal, textual_inversion
from storybook.training.methods.base import MethodPart
from storybook.weights import check_finite, file_tensors

METHODS: dict[Method, MethodPart] = {
    part.name: part for part in (lora.PART, dreambooth.PART, textual_inversion.PART, hypernetwork.PART, pivotal.PART)
}


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
