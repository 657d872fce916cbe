"""Textual Inversion (Gal et al. 2022): 1-4 new token embeddings for the character's identifier, started from the
class noun's, everything else frozen. Saved in diffusers' format (`learned_embeds.safetensors`) and as an A1111
embedding (`<token>.pt`, whose file name is the word A1111 and ComfyUI prompts use); loaded with diffusers'
`load_textual_inversion`, so the identifier in a page's prompt draws the character."""

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

from storybook.errors import TrainingError
from storybook.identities.base import MethodPart, ModelShape, SaveRequest, Trainable, freeze
from storybook.identities.record import IdentityMetadata
from storybook.identities.training_config import TrainingConfig
from storybook.registry import Character

EMBEDS_FILE = "learned_embeds.safetensors"
A1111_PLACEHOLDER_ID = 265  # the id of "*" in CLIP's vocabulary, which A1111 files record for their one string

# Published practice: diffusers' textual_inversion README (1 vector, lr 5e-4 scaled by the accumulation of 4, 3,000
# steps; no class images: the class noun's embedding is never changed). The tiny model learns in a minute.
DEFAULTS = {
    "real": {
        "steps": 3000,
        "learning_rate": 2e-3,
        "grad_accum": 4,
        "prior_preservation": False,
        "num_class_images": 0,
        "checkpoint_every": 500,
    },
    "tiny": {
        "steps": 60,
        "learning_rate": 5e-2,
        "batch_size": 4,
        "prior_preservation": False,
        "num_class_images": 0,
        "checkpoint_every": 20,
    },
    "mini": {
        "steps": 600,
        "learning_rate": 5e-3,
        "batch_size": 4,
        "prior_preservation": False,
        "num_class_images": 0,
        "checkpoint_every": 100,
    },
}


def vector_tokens(token: str, count: int) -> list[str]:
    """The tokenizer entries of an identifier learned as `count` vectors, named as diffusers expands them in prompts:
    'zorv', 'zorv_1', 'zorv_2' ..."""
    return [token] + [f"{token}_{index}" for index in range(1, count)]


def prepare(pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, dtype: torch.dtype) -> Trainable:
    """Train the identifier's new embeddings alone: the UNet frozen in `dtype`, the text encoder frozen in fp32 (as
    in diffusers' script) but for those rows.

    Raises TrainingError when the identifier is already a whole entry of this tokenizer's vocabulary.
    """
    freeze(pipeline.unet, dtype)
    freeze(pipeline.text_encoder)
    _, restore_other_rows = train_identifier_embeddings(pipeline, character, config)
    return Trainable(text_changes=True, after_step=restore_other_rows)


def train_identifier_embeddings(
    pipeline: DiffusionPipeline, character: Character, config: TrainingConfig
) -> tuple[torch.nn.Parameter, Callable[[], None]]:
    """Add the identifier's tokens to the tokenizer, start their embeddings at the class noun's mean embedding and make
    the embedding matrix trainable; return the matrix, and what must run after each optimiser step to keep every
    other row as it was.

    Raises TrainingError when the identifier is already a whole entry of this tokenizer's vocabulary.
    """
    tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder
    tokens = vector_tokens(character.token, config.num_vectors)
    if clashes := [token for token in tokens if token in tokenizer.get_vocab()]:
        raise TrainingError(
            f"{character.name}'s identifier {clashes[0]!r} is already a word of this model's tokenizer, so Textual "
            "Inversion cannot give it an embedding of its own: register the character again with this model "
            "(`storybook character add ... --model ...` picks an identifier the tokenizer lacks), or train another "
            "method (e.g. --method lora)."
        )
    class_ids = tokenizer(character.class_noun, add_special_tokens=False).input_ids
    tokenizer.add_tokens(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = text_encoder.get_input_embeddings().weight  # (vocabulary, D)
    new_ids = tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        embeddings[new_ids] = embeddings[class_ids].mean(dim=0)
    embeddings.requires_grad_(True)
    kept = torch.ones(len(embeddings), dtype=torch.bool)
    kept[new_ids] = False
    original = embeddings.detach().clone()

    def restore_other_rows() -> None:
        """Undo what the optimiser (weight decay included) did to every row but the identifier's."""
        nonlocal original, kept
        if original.device != embeddings.device:  # the pipeline was moved to the GPU after it was set up
            original, kept = original.to(embeddings.device), kept.to(embeddings.device)
        with torch.no_grad():  # the rows were copied in the frozen dtype; the trained matrix may be fp32 since
            embeddings[kept] = original[kept].to(embeddings.dtype)

    return embeddings, restore_other_rows


def learned_vectors(pipeline: DiffusionPipeline, token: str, count: int) -> torch.Tensor:
    """The trained embeddings of `token`'s `count` vectors; (count, D), fp32 on the CPU."""
    ids = pipeline.tokenizer.convert_tokens_to_ids(vector_tokens(token, count))
    return pipeline.text_encoder.get_input_embeddings().weight[ids].detach().float().cpu().contiguous()


def a1111_embedding(vectors: torch.Tensor, token: str, request: SaveRequest) -> dict:
    """An embedding in the layout AUTOMATIC1111's webui writes (and diffusers and ComfyUI read)."""
    return {
        "string_to_token": {"*": A1111_PLACEHOLDER_ID},
        "string_to_param": {"*": vectors},
        "name": token,
        "step": request.steps_done,
        "sd_checkpoint": request.base_fingerprint[:10],
        "sd_checkpoint_name": request.base_model,
    }


def save(
    folder: Path, pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, request: SaveRequest
) -> list[str]:
    """Write the learned vectors as diffusers' `learned_embeds.safetensors` and as the A1111 embedding `<token>.pt`;
    return the file names."""
    vectors = learned_vectors(pipeline, character.token, config.num_vectors)
    save_file({character.token: vectors}, folder / EMBEDS_FILE)
    a1111_file = f"{character.token}.pt"
    torch.save(a1111_embedding(vectors, character.token, request), folder / a1111_file)
    return [EMBEDS_FILE, a1111_file]


def load(pipeline: DiffusionPipeline, folder: Path, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Add the identifier's learned embeddings to the pipeline's tokenizer and text encoder."""
    pipeline.load_textual_inversion(str(folder / EMBEDS_FILE), token=metadata.token)


def unload(pipeline: DiffusionPipeline, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Take the identifier's tokens and embeddings out of the pipeline again."""
    pipeline.unload_textual_inversion(vector_tokens(metadata.token, metadata.config.num_vectors))


def trained_parameters(shape: ModelShape, config: TrainingConfig) -> int:
    """The whole embedding matrix trains (every row but the identifier's is restored after each step)."""
    return shape.token_embeddings


def resident_text_bytes(shape: ModelShape, config: TrainingConfig, frozen: int) -> int:
    """The text encoder stays on the card in fp32 (as diffusers' script keeps it), beside its trained matrix."""
    return (shape.text_encoders[0] - shape.token_embeddings) * 4


PART = MethodPart(
    "textual-inversion",
    DEFAULTS,
    prepare,
    save,
    load,
    unload,
    trained_parameters=trained_parameters,
    resident_text_bytes=resident_text_bytes,
)
