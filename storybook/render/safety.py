"""Safety for children's pages: every picture is shown to a safety checker before it may enter a book.

The checker is the base model's own when it ships one (SD 1.5's `safety_checker/` and `feature_extractor/`), or one
the data root's config names (`storybook config --safety-checker FOLDER_OR_HUB_ID`: a StableDiffusionSafetyChecker
saved with its CLIP image processor, a pipeline that ships one, or a pipeline's `safety_checker/` folder; e.g.
CompVis/stable-diffusion-safety-checker, the one SDXL users add), or none (`off`; the models built here ship none).
It is loaded from disk only, never downloaded.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from storybook.config import SAFETY_OFF
from storybook.errors import ModelError
from storybook.models import config_class, files_fingerprint, local_snapshot
from storybook.weights import check_finite, damaged_file

CHECKER_CLASS = "StableDiffusionSafetyChecker"
PictureCheck = Callable[[list[Image.Image]], list[bool]]  # pictures -> whether each is flagged


@dataclass(frozen=True)
class SafetyChecker:
    """A loaded safety checker: what flags pictures, what it is (for messages), and a fingerprint of its weights
    (part of every picture's key: another checker may let another picture through)."""

    flagged: PictureCheck
    source: str
    fingerprint: str


def checker_folders(folder: Path) -> tuple[Path, Path] | None:
    """The (checker, image processor) folders in `folder`: a pipeline's root (safety_checker/, feature_extractor/),
    a checker saved with its processor, or a pipeline's safety_checker/ beside its feature_extractor/; None when it is
    none of these."""
    layouts = [
        (folder / "safety_checker", folder / "feature_extractor"),
        (folder, folder),
        (folder, folder.parent / "feature_extractor"),
    ]
    for checker, processor in layouts:
        if (checker / "config.json").is_file() and (processor / "preprocessor_config.json").is_file():
            return checker, processor
    return None


def named_checker_folders(source: str) -> tuple[Path, Path]:
    """The folders of safety checker `source` (a folder, or a hub id in the Hugging Face cache). Raises ModelError
    naming what was looked for and how to get it when it is not here."""
    folder = local_snapshot(source)
    folders = checker_folders(folder) if folder is not None else None
    if folders is None:
        raise ModelError(
            f"The safety checker {source!r} is not on this machine: give a folder holding a "
            "StableDiffusionSafetyChecker's config.json and weights with its CLIP image processor's "
            "preprocessor_config.json (or a pipeline that ships them), or a hub id in the Hugging Face cache (on a "
            f"machine with network: `hf download {source}`); or turn it off with `storybook config --safety-checker "
            "off`."
        )
    if (kind := config_class(folders[0] / "config.json")) != CHECKER_CLASS:
        raise ModelError(
            f"{source} is not a safety checker: its config.json describes {kind or 'no model class'}, not a "
            f"{CHECKER_CLASS} (e.g. CompVis/stable-diffusion-safety-checker); or turn it off with `storybook config "
            "--safety-checker off`."
        )
    return folders


def model_checker_folders(model_path: str) -> tuple[Path, Path] | None:
    """The folders of the safety checker base model `model_path` ships, or None when its model_index.json lists
    none. Raises ModelError when it lists one that is not on this machine (a download that left it out)."""
    root = local_snapshot(model_path, ["model_index.json", "safety_checker/*", "feature_extractor/*"])
    if root is None or not (root / "model_index.json").is_file():
        return None
    listed = json.loads((root / "model_index.json").read_text()).get("safety_checker")
    if not isinstance(listed, list) or None in listed:
        return None
    folders = checker_folders(root)
    if folders is None or folders[0] != root / "safety_checker":
        raise ModelError(
            f"{model_path} ships a safety checker that is not on this machine: on a machine with network run `hf "
            f"download {model_path} --include 'safety_checker/*' 'feature_extractor/*'`, or name another with "
            "`storybook config --safety-checker ...` (or `off` for a model you trust)."
        )
    return folders


def checker_in_use(setting: str | None, model_path: str) -> tuple[tuple[Path, Path], str] | None:
    """The folders of the safety checker pictures of base `model_path` pass under the config's `setting` (None: the
    model's own; 'off'; a folder or hub id), and what it is; None when it is off or the model ships none. Raises
    ModelError when a named or listed checker is not on this machine."""
    if setting == SAFETY_OFF:
        return None
    if setting is None:
        folders = model_checker_folders(model_path)
        return (folders, model_path) if folders else None
    return named_checker_folders(setting), setting


def checker_fingerprint(checker_folder: Path, home: Path) -> str:
    """A fingerprint of the checker's weights in `checker_folder` (part of picture keys)."""
    weights = sorted(checker_folder.glob("*.safetensors")) or sorted(checker_folder.glob("*.bin"))
    return files_fingerprint(weights, home)


def load_checker(folders: tuple[Path, Path], source: str, home: Path, device: torch.device, dtype: torch.dtype):
    """The StableDiffusionSafetyChecker and CLIP image processor in `folders` as a SafetyChecker. Raises ModelError
    when they cannot be loaded."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    checker_folder, processor_folder = folders
    other = (
        "Download it again, or name another StableDiffusionSafetyChecker saved with its image processor (`storybook "
        "config --safety-checker ...`), or turn it off for a model you trust with `storybook config --safety-checker "
        "off`."
    )
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(checker_folder, dtype=dtype).to(device).eval()
        processor = CLIPImageProcessor.from_pretrained(processor_folder)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"The safety checker {source} cannot be loaded ({damaged_file(checker_folder) or error}). {other}"
        ) from None
    # NaN weights would flag nothing: every picture would pass unscreened
    check_finite(checker.named_parameters(), f"The safety checker {source}", other)

    def flagged(pictures: list[Image.Image]) -> list[bool]:
        """Whether the checker finds a concept it screens for in each picture."""
        clip_input = processor(pictures, return_tensors="pt").pixel_values.to(device, dtype)
        pixels = np.stack([np.asarray(picture.convert("RGB"), np.float32) / 255 for picture in pictures])
        _, has_concept = checker(images=pixels, clip_input=clip_input)
        return [bool(flag) for flag in has_concept]

    return SafetyChecker(flagged, source, checker_fingerprint(checker_folder, home))


def load_safety_checker(
    setting: str | None, model_path: str, home: Path, device: torch.device, dtype: torch.dtype
) -> SafetyChecker | None:
    """The safety checker for pictures of base `model_path` under the config's `setting` (None: the model's own;
    'off'; a folder or hub id), or None when it is off or the model ships none. Raises ModelError when a named or
    listed checker is not on this machine or cannot be loaded."""
    in_use = checker_in_use(setting, model_path)
    return load_checker(*in_use, home, device, dtype) if in_use else None
