"""Consistency metrics: exact ones read by the lab's evaluator, and DreamBench's embedding ones for real models.

World metrics compare evaluator readings with the registered toddler's truth. Embedding metrics (DINO, CLIP-I,
CLIP-T as in the DreamBooth paper, plus a face similarity) take encoders the user provides as local transformers
folders, so no weights are ever downloaded here.
"""

from itertools import combinations
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoProcessor, CLIPModel

from storybook.lab import world
from storybook.photos import face_box

IDENTITY_FIELDS = (*world.ATTRIBUTES, *world.SIGNATURE)


def is_same_character(reading: dict[str, str], toddler: world.Toddler) -> bool:
    """Whether a reading shows `toddler`: every attribute AND every part of the signature match."""
    return all(reading[field] == getattr(toddler, field) for field in IDENTITY_FIELDS)


def identity_consistency(readings: list[dict[str, str]], toddler: world.Toddler) -> float:
    """Share of pages whose character is the registered `toddler` in attributes and signature."""
    return share(is_same_character(reading, toddler) for reading in readings)


def part_match(readings: list[dict[str, str]], toddler: world.Toddler, fields: dict) -> float:
    """Share of pages matching `toddler` in all of `fields` (world.ATTRIBUTES or world.SIGNATURE): which part of the
    identity a method gets right when the whole does not match."""
    return share(all(reading[field] == getattr(toddler, field) for field in fields) for reading in readings)


def pairwise_agreement(readings: list[dict[str, str]]) -> float:
    """Share of page pairs of one book that show the same character (whoever it is) in every identity field."""
    pairs = list(combinations(readings, 2))
    return share(all(a[field] == b[field] for field in IDENTITY_FIELDS) for a, b in pairs)


def prompt_fidelity(readings: list[dict[str, str]], settings: list[str]) -> float:
    """Share of pages drawn in the setting their prompt asked for."""
    return share(reading["setting"] == setting for reading, setting in zip(readings, settings, strict=True))


def class_drift(readings: list[dict[str, str]], toddler: world.Toddler) -> float:
    """Share of class-noun-only pictures ('a toddler ...', no identifier) that wear the subject's signature."""
    return share(tuple(reading[field] for field in world.SIGNATURE) == toddler.signature for reading in readings)


def share(outcomes) -> float:
    """The share of true values among `outcomes` (0.0 when there are none)."""
    values = list(outcomes)
    return sum(values) / len(values) if values else 0.0


class ImageEncoder:
    """A user-provided image encoder (a transformers folder: DINO/DINOv2 ViT, CLIP, or a face model) that embeds
    pictures as unit vectors. CLIP models use their projected image features; others their first (CLS) token."""

    def __init__(self, path: str | Path):
        self.model = AutoModel.from_pretrained(path).eval()
        self.processor = AutoImageProcessor.from_pretrained(path)

    @torch.no_grad()
    def embed(self, pictures: list[Image.Image]) -> torch.Tensor:
        """(N, D) unit-length embeddings of `pictures`."""
        pixels = self.processor(images=[p.convert("RGB") for p in pictures], return_tensors="pt").pixel_values
        if isinstance(self.model, CLIPModel):
            features = self.model.get_image_features(pixel_values=pixels).pooler_output
        else:
            features = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(features, dim=-1)


def mean_similarity(encoder: ImageEncoder, generated: list[Image.Image], references: list[Image.Image]) -> float:
    """DINO / CLIP-I: the mean cosine similarity over every (generated, reference photo) pair."""
    return float((encoder.embed(generated) @ encoder.embed(references).T).mean())


@torch.no_grad()
def clip_text_similarity(clip_path: str | Path, generated: list[Image.Image], prompts: list[str]) -> float:
    """CLIP-T: the mean cosine similarity of each picture with its own prompt (DreamBench writes the class noun in
    place of the identifier, e.g. 'a toddler playing with a ball at the beach')."""
    model = CLIPModel.from_pretrained(clip_path).eval()
    processor = AutoProcessor.from_pretrained(clip_path)
    inputs = processor(
        text=prompts, images=[p.convert("RGB") for p in generated], return_tensors="pt", padding=True, truncation=True
    )
    images = model.get_image_features(pixel_values=inputs.pixel_values).pooler_output
    texts = model.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).pooler_output
    images, texts = (torch.nn.functional.normalize(x, dim=-1) for x in (images, texts))
    return float((images * texts).sum(dim=-1).mean())


def face_similarity(
    encoder: ImageEncoder, generated: list[Image.Image], references: list[Image.Image]
) -> tuple[float | None, float]:
    """Mean cosine similarity of the faces found in `generated` with those in `references` (OpenCV's face detector
    crops them; `encoder` is the user's face-embedding model), and the share of generated pictures with a face.

    The similarity is None when no face is found on either side.
    """

    def faces(pictures: list[Image.Image]) -> list[Image.Image]:
        found = [(picture, face_box(picture)) for picture in pictures]
        return [picture.crop(box) for picture, box in found if box is not None]

    generated_faces, reference_faces = faces(generated), faces(references)
    found_share = len(generated_faces) / len(generated) if generated else 0.0
    if not generated_faces or not reference_faces:
        return None, found_share
    return mean_similarity(encoder, generated_faces, reference_faces), found_share


def embedding_metrics(
    generated: list[Image.Image],
    references: list[Image.Image],
    prompts: list[str],
    dino: str | Path | None = None,
    clip: str | Path | None = None,
    face: str | Path | None = None,
) -> dict[str, float | None]:
    """DreamBench's DINO, CLIP-I and CLIP-T, and face similarity, for each encoder given (others are left out)."""
    scores: dict[str, float | None] = {}
    if dino:
        scores["dino"] = mean_similarity(ImageEncoder(dino), generated, references)
    if clip:
        scores["clip_i"] = mean_similarity(ImageEncoder(clip), generated, references)
        scores["clip_t"] = clip_text_similarity(clip, generated, prompts)
    if face:
        scores["face"], scores["faces_found"] = face_similarity(ImageEncoder(face), generated, references)
    return scores
