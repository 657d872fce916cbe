"""Model families as parts of the trainer: how a caption becomes what the UNet is conditioned on, which text encoders
the pipeline has (a LoRA on the text adapts each), and the kohya names of their layers.

SD 1.x/2.x condition the UNet on one text encoder's hidden states. SDXL concatenates two encoders' hidden states and
also gives the UNet the second encoder's pooled embedding and six "time ids" (original size, crop corner, target size)
of each picture, as diffusers' train_dreambooth_lora_sdxl.py does.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline

from storybook.models import SDXL_PIPELINES


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on for a batch: (B, 77, D) text embeddings and, for SDXL, `added` inputs
    (`text_embeds` (B, P), the pooled text embedding, and `time_ids` (B, 6)). Indexed and concatenated like a tensor
    along the batch."""

    embeddings: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitem__(self, index) -> "Conditioning":
        return Conditioning(self.embeddings[index], {key: value[index] for key, value in self.added.items()})

    def expand(self, batch_size: int) -> "Conditioning":
        """This one-row conditioning repeated `batch_size` times."""
        return self[torch.zeros(batch_size, dtype=torch.long)]

    def unet_inputs(self) -> dict:
        """The keyword arguments of the UNet's forward pass."""
        return {"encoder_hidden_states": self.embeddings, "added_cond_kwargs": self.added or None}


def concatenated(parts: list[Conditioning]) -> Conditioning:
    """`parts` one after the other along the batch."""
    return Conditioning(
        torch.cat([part.embeddings for part in parts]),
        {key: torch.cat([part.added[key] for part in parts]) for key in parts[0].added},
    )


def encode_sd(pipeline: DiffusionPipeline, prompts: list[str]) -> Conditioning:
    """SD 1.x/2.x: the text encoder's hidden states of each prompt; (len(prompts), 77, D)."""
    embeddings, _ = pipeline.encode_prompt(prompts, pipeline.unet.device, 1, False)
    return Conditioning(embeddings)


def encode_sdxl(pipeline: DiffusionPipeline, prompts: list[str]) -> Conditioning:
    """SDXL: both text encoders' hidden states and the pooled embedding of each prompt (the time ids depend on the
    picture, see `sdxl_time_ids`)."""
    embeddings, _, pooled, _ = pipeline.encode_prompt(
        prompts, device=pipeline.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return Conditioning(embeddings, {"text_embeds": pooled})


def no_size_inputs(sides: torch.Tensor, resolution: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """SD 1.x/2.x are not told the pictures' sizes."""
    return {}


def sdxl_time_ids(sides: torch.Tensor, resolution: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """SDXL's time ids of square pictures whose side was `sides` (N,) before they were resized to `resolution`,
    uncropped: (N, 6) rows of (original height, width, crop top, left, target height, width), in `like`'s dtype and
    on its device, as diffusers' SDXL training scripts compute them from each image's size before resizing."""
    rows = [[side, side, 0, 0, resolution, resolution] for side in sides.tolist()]
    return {"time_ids": torch.tensor(rows, dtype=like.dtype, device=like.device)}


def sample_inputs_sd(pipeline: DiffusionPipeline, prompt: str) -> dict[str, torch.Tensor]:
    """The pipeline's prompt inputs for drawing `prompt` with guidance, encoded now (its text encoder may leave the
    card afterwards)."""
    positive, negative = pipeline.encode_prompt(prompt, pipeline.unet.device, 1, True)
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative}


def sample_inputs_sdxl(pipeline: DiffusionPipeline, prompt: str) -> dict[str, torch.Tensor]:
    """SDXL's prompt inputs for drawing `prompt` with guidance, both encoders' and pooled, encoded now."""
    positive, negative, pooled, negative_pooled = pipeline.encode_prompt(
        prompt, device=pipeline.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    return {
        "prompt_embeds": positive,
        "negative_prompt_embeds": negative,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


@dataclass(frozen=True)
class Family:
    """One model family, as the trainer sees it."""

    text_encoders: tuple[str, ...]  # the pipeline's text encoder attributes, in order
    encode: Callable[[DiffusionPipeline, list[str]], Conditioning]  # captions -> their conditioning
    size_inputs: Callable[[torch.Tensor, int, torch.Tensor], dict[str, torch.Tensor]]  # pictures' sides -> inputs
    sample_inputs: Callable[[DiffusionPipeline, str], dict[str, torch.Tensor]]  # a prompt -> the pipeline's inputs
    # kohya's text-encoder prefixes where they differ from diffusers' converter (which writes SDXL's `lora_te1_`/
    # `lora_te2_`): SD 1.x/2.x LoRAs name their one encoder `lora_te_`.
    kohya_renames: dict[str, str] = field(default_factory=dict)


FAMILIES = {  # by the name `models.model_family` reads from model_index.json
    "sd": Family(("text_encoder",), encode_sd, no_size_inputs, sample_inputs_sd, {"lora_te1_": "lora_te_"}),
    "sdxl": Family(("text_encoder", "text_encoder_2"), encode_sdxl, sdxl_time_ids, sample_inputs_sdxl),
}


def pipeline_family(pipeline: DiffusionPipeline) -> Family:
    """The family of a loaded pipeline."""
    return FAMILIES["sdxl" if type(pipeline).__name__ in SDXL_PIPELINES else "sd"]


def text_encoders(pipeline: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's text encoders by attribute name ('text_encoder', and 'text_encoder_2' for SDXL)."""
    return {name: getattr(pipeline, name) for name in pipeline_family(pipeline).text_encoders}
