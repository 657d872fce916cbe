"""Safety for children's pages: every picture is shown to a safety checker before it may enter a book.

The checker is the base model's own when it ships one (SD 1.5's `safety_checker/` and `feature_extractor/`), or one
the data root's config names (`storybook config --safety-checker FOLDER_OR_HUB_ID`, a StableDiffusionSafetyChecker
saved with its feature extractor, e.g. CompVis/stable-diffusion-safety-checker: the one SDXL users add), or none
(`--safety-checker off`; the models built here ship none). It is loaded from disk only, never downloaded.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from storybook.errors import ModelError
from storybook.models import local_snapshot

SAFETY_OFF = "off"  # the config's value for "no safety checker"
PictureCheck = Callable[[list[Image.Image]], list[bool]]  # pictures -> whether each is flagged


def check_checker_on_disk(source: str) -> Path:
    """The folder of safety checker `source` (a folder, or a hub id in the Hugging Face cache). Raises ModelError
    naming what was looked for and how to get it when it is not here."""
    folder = local_snapshot(source)
    if folder is None or not (folder / "config.json").is_file():
        raise ModelError(
            f"The safety checker {source!r} is not on this machine (a folder holding a StableDiffusionSafetyChecker's "
            f"config.json, or a hub id in the Hugging Face cache): on a machine with network run `hf download "
            f"{source}`, or turn it off with `storybook config --safety-checker off`."
        )
    return folder


def model_checker_folder(model_path: str) -> Path | None:
    """The base model's own safety checker folder (its pipeline root, holding safety_checker/ and
    feature_extractor/), or None when it ships none."""
    root = local_snapshot(model_path, ["model_index.json", "safety_checker/*", "feature_extractor/*"])
    if root is None or not (root / "safety_checker" / "config.json").is_file():
        return None
    return root


def load_checker(folder: Path, subfolders: tuple[str, str], device: torch.device, dtype: torch.dtype) -> PictureCheck:
    """The StableDiffusionSafetyChecker in `folder`/subfolders[0] with the CLIP image processor in
    `folder`/subfolders[1], as a function flagging pictures. Raises ModelError when they cannot be loaded."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    checker_folder, processor_folder = (folder / name if name else folder for name in subfolders)
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(checker_folder, dtype=dtype).to(device).eval()
        processor = CLIPImageProcessor.from_pretrained(processor_folder)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"The safety checker in {folder} cannot be loaded ({error}). Name a StableDiffusionSafetyChecker folder "
            "saved with its feature extractor (`storybook config --safety-checker ...`), or turn it off for a model "
            "you trust with `storybook config --safety-checker off`."
        ) from None

    def flagged(pictures: list[Image.Image]) -> list[bool]:
        """Whether the checker finds a concept it screens for in each picture."""
        clip_input = processor(pictures, return_tensors="pt").pixel_values.to(device, dtype)
        pixels = np.stack([np.asarray(picture, np.float32) / 255 for picture in pictures])
        _, has_concept = checker(images=pixels, clip_input=clip_input)
        return [bool(flag) for flag in has_concept]

    return flagged


def load_safety_checker(
    setting: str | None, model_path: str, device: torch.device, dtype: torch.dtype
) -> tuple[PictureCheck | None, str]:
    """The safety check for pictures of base `model_path` under the config's `setting` (None: the model's own; 'off';
    a folder or hub id), and what it is, for picture keys and messages ('off' when turned off, '' when the model ships
    none). Raises ModelError when a named checker is not on this machine or cannot be loaded."""
    if setting == SAFETY_OFF:
        return None, SAFETY_OFF
    if setting is None:
        folder = model_checker_folder(model_path)
        if folder is None:
            return None, ""
        return load_checker(folder, ("safety_checker", "feature_extractor"), device, dtype), model_path
    return load_checker(check_checker_on_disk(setting), ("", ""), device, dtype), setting
