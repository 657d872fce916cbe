"""Pivotal tuning: Textual Inversion and a LoRA, the recipe of diffusers' advanced DreamBooth-LoRA script and kohya's
trainers: the identifier gets embeddings of its own (the "pivot") while the UNet's LoRA learns the rest, trained
together from the first step or, with `embedding_steps`, in AttnDreamBooth's order (the embeddings alone first, then
both). Saved as both methods save (diffusers' and A1111's embedding files beside the LoRA file) and loaded as both
load: the embeddings as new tokens, the LoRA as an adapter switched on the character's pages."""

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from storybook.identities import lora, textual_inversion
from storybook.identities.base import MethodPart, ModelShape, SaveRequest, Trainable
from storybook.identities.record import IdentityMetadata
from storybook.identities.training_config import TrainingConfig
from storybook.registry import Character

# The LoRA's defaults with its class images (the diffusers script keeps prior preservation optional); the embeddings
# train at the LoRA's rate, as the script's joint training does. storybook-mini, measured with the consistency lab
# (docs/lab.md, "Consistency lab"): 300 steps draw the held-out character whole as often as 600 (12% against 11% of
# pages) at a third of the class drift (10% against 32%) in half the time.
DEFAULTS = lora.DEFAULTS | {"mini": lora.DEFAULTS["mini"] | {"steps": 300}}


def prepare(pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, dtype: torch.dtype) -> Trainable:
    """The LoRA of `lora.prepare`, and the identifier's new embeddings trainable beside it (at their own rate when
    set); with `embedding_steps` the LoRA waits that many steps. The text encoder stays in fp32 around its trained
    fp32 embedding matrix, as Textual Inversion's does: in half precision its first layer norm would meet fp32
    embeddings (what autocast covers on a GPU and not on a CPU)."""
    lora.prepare(pipeline, character, config, dtype)
    pipeline.text_encoder.to(torch.float32)  # its LoRA, when it has one, keeps training
    embeddings, restore = textual_inversion.train_identifier_embeddings(pipeline, character, config)
    lora_parameters = [
        parameter
        for module in (pipeline.unet, pipeline.text_encoder)
        for name, parameter in module.named_parameters()
        if "lora_" in name and parameter.requires_grad
    ]

    def lora_waits_for_the_embeddings(step: int) -> None:
        """Before step `embedding_steps` the LoRA's gradients are dropped, so the optimiser leaves it as it was."""
        if step < config.embedding_steps:
            for parameter in lora_parameters:
                parameter.grad = None

    rates = {embeddings: config.embedding_learning_rate} if config.embedding_learning_rate else {}
    return Trainable(
        text_changes=True, after_step=restore, before_update=lora_waits_for_the_embeddings, learning_rates=rates
    )


def save(
    folder: Path, pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, request: SaveRequest
) -> list[str]:
    """Write the embeddings (both formats) and the LoRA (with kohya's names when asked); return the file names."""
    return textual_inversion.save(folder, pipeline, character, config, request) + lora.save(
        folder, pipeline, character, config, request
    )


def load(pipeline: DiffusionPipeline, folder: Path, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Add the identifier's embeddings, then load the LoRA as adapter `adapter_name`."""
    textual_inversion.load(pipeline, folder, metadata, adapter_name)
    lora.load(pipeline, folder, metadata, adapter_name)


def unload(pipeline: DiffusionPipeline, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Take both out of the pipeline again."""
    lora.unload(pipeline, metadata, adapter_name)
    textual_inversion.unload(pipeline, metadata, adapter_name)


def trained_parameters(shape: ModelShape, config: TrainingConfig) -> int:
    """The LoRA's and the embedding matrix's."""
    return lora.trained_parameters(shape, config) + textual_inversion.trained_parameters(shape, config)


def resident_text_bytes(shape: ModelShape, config: TrainingConfig, frozen: int) -> int:
    """The text encoder stays on the card in fp32 beside its trained matrix, as Textual Inversion's."""
    return textual_inversion.resident_text_bytes(shape, config, frozen)


PART = MethodPart(
    "pivotal",
    DEFAULTS,
    prepare,
    save,
    load,
    unload,
    lora_adapter=True,
    trained_parameters=trained_parameters,
    resident_text_bytes=resident_text_bytes,
)
