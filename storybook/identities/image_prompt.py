"""Image-prompt identities (IP-Adapter): a character drawn from the image embedding of its own photos.

No training: the adapter's image encoder embeds the character's prepared photos once (seconds, on the data root's
device and in its dtype), the embedding is saved in the character's identity folder (the mean of the photos' for a
basic adapter; for a "plus" adapter, which reads an image's patch tokens, those of the most typical photo), and the
renderer passes it to diffusers (`load_ip_adapter`,
`set_ip_adapter_scale`, `ip_adapter_image_embeds`, `ip_adapter_masks`) on the pages where the character is drawn.
An adapter is named by an `AdapterSource`: storybook-mini's committed one, or the user's own IP-Adapter weights (e.g.
h94/IP-Adapter `models/ip-adapter_sd15.safetensors` with `models/image_encoder`) by local folder or downloaded hub id;
nothing is downloaded at run time.

Files in `characters/<slug>/identity/`: `image_prompt.json` (which adapter, its fingerprint, the default scale, the
photos' hashes) and `image_embeds.safetensors` (`positive` and `negative`, the classifier-free-guidance pair).
"""

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModelWithProjection
from transformers.models.clip import CLIPImageProcessorPil

from storybook.config import MINI_ADAPTER, MINI_ADAPTER_SOURCE, AdapterSource, load_config
from storybook.errors import ModelError, describe_problems
from storybook.models import config_class, files_fingerprint, local_snapshot, pick_device, pick_dtype
from storybook.registry import Character, prepared_photo_paths
from storybook.storage import atomic_write_text
from storybook.weights import check_finite, damaged_file, file_tensors, unreadable

IMAGE_PROMPT_FILE = "image_prompt.json"
EMBEDS_FILE = "image_embeds.safetensors"
MINI_ADAPTER_FOLDER = Path(__file__).resolve().parent.parent / "weights" / "storybook-mini-ip-adapter"
ENCODER_CLASS = "CLIPVisionModelWithProjection"  # an IP-Adapter's image encoder
MINI_ADAPTER_SCALE = 1.0  # storybook-mini's adapter was trained at scale 1 (docs/lab.md, "Consistency lab")
REBUILD = "Build the identity again with `storybook character train NAME` (and its --method)."


class ImagePrompt(BaseModel):
    """image_prompt.json: which adapter embedded which photos, and how strongly the renderer applies it."""

    schema_version: int = 1
    character: str
    base_model: str  # the model the adapter was named for (its cross-attention must fit the adapter's)
    adapter: AdapterSource
    adapter_fingerprint: str  # SHA-256 of the adapter's weights file and image encoder weights
    embeds_sha256: str  # of image_embeds.safetensors: a new embedding changes every picture's cache key
    scale: float = Field(gt=0, le=4)
    photo_sha256: list[str]
    wall_time_s: float
    created_at: datetime


def default_adapter(model: str) -> AdapterSource | None:
    """The adapter that fits base `model` without being named: storybook-mini's own; none for other models."""
    return MINI_ADAPTER_SOURCE if model == MINI_ADAPTER else None


def adapter_root(adapter: AdapterSource) -> Path:
    """The local folder holding `adapter`'s files (a hub id resolves to its cached snapshot, never downloaded).

    Raises ModelError naming what was looked for when the files are not on this machine.
    """
    if adapter.source == MINI_ADAPTER:
        return MINI_ADAPTER_FOLDER
    root = local_snapshot(adapter.source, [adapter.weight_name, f"{adapter.image_encoder}/*"])
    if root is None:
        raise ModelError(
            f"The IP-Adapter {adapter.source!r} is not a local folder and is not in the Hugging Face cache. On a "
            f"machine with network run `hf download {adapter.source} {adapter.weight_name} --include "
            f"'{adapter.image_encoder}/*'`, or pass a local folder with --ip-adapter."
        )
    return root


def adapter_files(adapter: AdapterSource) -> tuple[Path, Path]:
    """(weights file, image encoder folder) of `adapter`. Raises ModelError when either is missing."""
    root = adapter_root(adapter)
    weights, encoder = root / adapter.weight_name, root / adapter.image_encoder
    if not weights.is_file():
        raise ModelError(f"The IP-Adapter weights {weights} are missing: give the file with --ip-adapter-weight.")
    if not (encoder / "config.json").is_file():
        raise ModelError(f"The IP-Adapter's image encoder {encoder} is missing: give it with --image-encoder.")
    return weights, encoder


def check_adapter(adapter: AdapterSource) -> None:
    """Raises ModelError when `adapter` is not on this machine or is not an IP-Adapter: its weights file must be a
    basic or plus IP-Adapter's safetensors, its image encoder a CLIPVisionModelWithProjection folder."""
    weights, encoder = adapter_files(adapter)
    is_plus_adapter(weights)
    if (kind := config_class(encoder / "config.json")) != ENCODER_CLASS:
        raise ModelError(
            f"{encoder} is not an IP-Adapter's image encoder: its config.json describes {kind or 'no model class'}, "
            f"not a {ENCODER_CLASS}: give the adapter's own with --image-encoder (h94's: models/image_encoder)."
        )


def adapter_fingerprint(adapter: AdapterSource, home: Path) -> str:
    """SHA-256 (16 hex digits) of the adapter's weights file and its image encoder's weights (cached under home)."""
    weights, encoder = adapter_files(adapter)
    return files_fingerprint([weights, *sorted(encoder.glob("*.safetensors")), *sorted(encoder.glob("*.bin"))], home)


def image_processor(size: int) -> CLIPImageProcessorPil:
    """CLIP's preprocessing at an image encoder's size: what diffusers builds for an adapter's encoder."""
    return CLIPImageProcessorPil(size=size, crop_size=size)


def is_plus_adapter(weights_file: Path) -> bool:
    """Whether the adapter reads the encoder's hidden states (plus, plus-face: a perceiver Resampler) rather than
    its pooled image embedding (the basic adapter's `proj`). Raises ModelError for other kinds (FaceID) and for a file
    that is not safetensors or is damaged."""
    try:
        with safe_open(weights_file, framework="pt") as weights:
            keys = set(weights.keys())
    except (OSError, SafetensorError):
        raise ModelError(
            f"{unreadable(weights_file)}: give an IP-Adapter's .safetensors weights (e.g. ip-adapter_sd15.safetensors)."
        ) from None
    if "image_proj.proj.weight" in keys:
        return False
    if "image_proj.latents" in keys:
        return True
    raise ModelError(
        f"{weights_file.name} is not a basic or plus IP-Adapter (FaceID adapters, which need insightface face "
        "embeddings, are not supported): use e.g. ip-adapter_sd15.safetensors or ip-adapter-plus-face_sd15."
    )


def most_typical(embeddings: torch.Tensor) -> int:
    """The index of the row of `embeddings` (N, D) most like the others: the highest cosine similarity to their
    mean."""
    normed = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    return int((normed @ normed.mean(0)).argmax())


@torch.no_grad()
def embed_photos(
    adapter: AdapterSource, photos: list[Path], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The adapter's image embedding of `photos` by its image encoder on `device` in `dtype`, as diffusers'
    `encode_image` makes them: {'positive': (1, D) or (1, T, D), 'negative': the same shape}, in fp32 on the CPU.

    A basic adapter's is the mean of the photos' pooled embeddings (its negative: zeros). A plus adapter reads the
    T patch tokens of one image, each tied to a place in it: averaging tokens of different photos place by place
    mixes unrelated parts, so its positive is the tokens of the most typical photo (by pooled embedding) and its
    negative those of an all-zero input. Raises ModelError when the adapter's files are missing or damaged (cannot be
    read, or NaN or infinite weights)."""
    weights, encoder_folder = adapter_files(adapter)
    redo = "Download it again, or name another IP-Adapter (--ip-adapter, `storybook config --ip-adapter`)."
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_folder, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as error:
        raise ModelError(
            f"The IP-Adapter's image encoder {encoder_folder} cannot be loaded "
            f"({damaged_file(encoder_folder) or error}). {redo}"
        ) from None
    check_finite(encoder.named_parameters(), f"The IP-Adapter's image encoder {encoder_folder}", redo)
    processor = image_processor(encoder.config.image_size)
    pixels = processor([Image.open(path).convert("RGB") for path in photos], return_tensors="pt").pixel_values
    pixels = pixels.to(device, dtype)
    output = encoder(pixels, output_hidden_states=True)
    if is_plus_adapter(weights):
        positive = output.hidden_states[-2][most_typical(output.image_embeds)][None]
        negative = encoder(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2]
    else:
        positive = output.image_embeds.mean(0, keepdim=True)
        negative = torch.zeros_like(positive)
    return {"positive": positive.float().cpu().contiguous(), "negative": negative.float().cpu().contiguous()}


def write_image_prompt(
    home: Path, folder: Path, character: Character, model: str, adapter: AdapterSource, scale: float
) -> ImagePrompt:
    """Embed `character`'s prepared photos with `adapter` (named for base `model`) and save the embedding and
    image_prompt.json in `folder` (the embedding first, the record last, each atomically). Returns the record."""
    started = time.perf_counter()
    config = load_config(home)
    device = pick_device(config.device)
    embeds = embed_photos(adapter, prepared_photo_paths(home, character), device, pick_dtype(device, config.dtype))
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{EMBEDS_FILE}.tmp"
    save_file(embeds, partial)
    os.replace(partial, folder / EMBEDS_FILE)
    record = ImagePrompt(
        character=character.slug,
        base_model=model,
        adapter=adapter,
        adapter_fingerprint=adapter_fingerprint(adapter, home),
        embeds_sha256=hashlib.sha256((folder / EMBEDS_FILE).read_bytes()).hexdigest(),
        scale=scale,
        photo_sha256=[record.sha256 for record in character.photos],
        wall_time_s=time.perf_counter() - started,
        created_at=datetime.now(timezone.utc),
    )
    atomic_write_text(folder / IMAGE_PROMPT_FILE, record.model_dump_json(indent=2))
    return record


def read_image_prompt(folder: Path) -> ImagePrompt | None:
    """The image prompt saved in identity folder `folder`, or None when the identity has none. Raises ModelError when
    its record is damaged."""
    record = folder / IMAGE_PROMPT_FILE
    if not record.is_file():
        return None
    try:
        return ImagePrompt.model_validate(json.loads(record.read_text(encoding="utf-8")))
    except ValueError as error:  # not JSON (or not UTF-8), or not an image prompt record
        problem = describe_problems(error) if isinstance(error, ValidationError) else "not a JSON record"
        raise ModelError(f"{record} is damaged ({problem}). {REBUILD}") from None


def load_image_embeds(folder: Path) -> dict[str, torch.Tensor]:
    """The saved embedding pair of identity folder `folder` ({'positive', 'negative'}). Raises ModelError when the
    file is damaged (cut off, or NaN or infinite values)."""
    path = folder / EMBEDS_FILE
    check_finite(file_tensors(path), f"The image prompt in {folder}", REBUILD)
    return load_file(path)
