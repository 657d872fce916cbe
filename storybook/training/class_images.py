"""Prior-preservation class images: generated once by the base model, cached per (model, class noun), reused."""

import gc
import io
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from storybook.storage import atomic_write_bytes, slugify

BATCH = 4  # small batches: generating class images is where SD 1.5 training used to run out of memory


def class_prompt(class_noun: str) -> str:
    """The caption of the class images, e.g. 'a photo of toddler'."""
    return f"a photo of {class_noun}"


def class_image_dir(home: Path, model_fingerprint: str, class_noun: str) -> Path:
    """Where the class images of this base model and class noun are cached."""
    return home / "cache" / "class-images" / model_fingerprint / slugify(class_noun)


def ensure_class_images(
    load_base: Callable[[], DiffusionPipeline],
    folder: Path,
    class_noun: str,
    count: int,
    steps: int,
    show_progress: bool = True,
    batch_size: int = BATCH,
) -> list[Path]:
    """Return `count` class images in `folder`, generating only the missing ones (image i always uses seed i),
    `batch_size` at a time, with the base pipeline `load_base` returns (called only when some are missing; it decodes
    one picture of a batch at a time, and is dropped afterwards)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{index:04d}.png" for index in range(count)]
    missing = [index for index, path in enumerate(paths) if not path.exists()]
    if not missing:
        return paths
    pipeline = load_base()
    pipeline.vae.enable_slicing()  # a batch of 4 SDXL pictures decoded at once would need ~12 GB
    with tqdm(total=len(missing), desc="class images", disable=not show_progress) as progress:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            images = pipeline(
                [class_prompt(class_noun)] * len(batch),
                num_inference_steps=steps,
                generator=[torch.Generator("cpu").manual_seed(index) for index in batch],
            ).images
            for index, image in zip(batch, images, strict=True):
                png = io.BytesIO()
                image.save(png, format="PNG")
                atomic_write_bytes(paths[index], png.getvalue())
            progress.update(len(batch))
    del pipeline  # its memory goes back before the training pipeline loads
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return paths
