"""Drawing with the tiny model in the training tests: fresh pipelines, fixed-seed pictures, the photos' colour."""

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from storybook import registry
from storybook.models import TINY_MODEL_FOLDER


def fresh_pipeline(home) -> StableDiffusionPipeline:
    """The tiny base model as saved, without any identity."""
    pipeline = StableDiffusionPipeline.from_pretrained(TINY_MODEL_FOLDER)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def render(pipeline, prompt: str, seeds=(0, 1, 2)) -> np.ndarray:
    """Images for `prompt` at fixed seeds as floats in [0, 1]; (N, H, W, 3). Without classifier-free guidance: the
    conditional prediction is what identity training teaches, and guidance 7.5 saturates the tiny model's colours."""
    images = pipeline(
        [prompt] * len(seeds),
        num_inference_steps=10,
        guidance_scale=1.0,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="np",
    ).images
    return np.asarray(images)


def photo_colour(home, character) -> np.ndarray:
    """Mean RGB of the character's prepared photos, in [0, 1]."""
    folder = registry.character_dir(home, character.slug)
    crops = [np.asarray(Image.open(folder / r.prepared).convert("RGB"), np.float32) / 255 for r in character.photos]
    return np.mean([crop.mean(axis=(0, 1)) for crop in crops], axis=0)


def colour_distance(pictures: np.ndarray, colour: np.ndarray) -> float:
    """Mean absolute distance between the pictures' mean colours and `colour`."""
    return float(np.abs(pictures.mean(axis=(1, 2)) - colour).mean())
