"""Automatic captions for registration photos: BLIP (transformers' BlipForConditionalGeneration) from the user's own
weights, e.g. Salesforce/blip-image-captioning-base as a local folder or already in the Hugging Face cache (never
downloaded here). The captions land in character.json beside each photo, where the parent can edit them; the
methods that train on captions (the hypernetwork, as the founding paper did) use them."""

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from storybook.errors import CharacterError, ModelError
from storybook.models import local_snapshot, pick_device
from storybook.registry import (
    MAX_CAPTION,
    Character,
    check_caption,
    clean_caption,
    load_character,
    prepared_photo_paths,
    set_photo_captions,
)
from storybook.weights import check_finite, damaged_file

MAX_NEW_TOKENS = 30  # BLIP's captions are one short sentence; kohya's make_captions.py allows 75 tokens
NUM_BEAMS = 3  # beam search: the same photo always gets the same caption


@dataclass
class Captioner:
    """A loaded BLIP captioning model and its processor."""

    model: "torch.nn.Module"
    processor: object

    @torch.no_grad()
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, on one line, cut to MAX_CAPTION characters ('' when BLIP says nothing)."""
        inputs = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        tokens = self.model.generate(pixel_values=pixels, max_new_tokens=MAX_NEW_TOKENS, num_beams=NUM_BEAMS)
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [check_caption(clean_caption(printable(text))[:MAX_CAPTION], "BLIP's caption") for text in texts]


def printable(text: str) -> str:
    """`text` with a space for each character that is not printable (`check_caption` then joins the runs)."""
    return "".join(c if c.isprintable() else " " for c in text)


def captioner_root(source: str) -> Path:
    """The local folder of BLIP weights `source` (a folder, or a hub id already in the cache). Raises ModelError
    naming what was looked for when it is not on this machine."""
    root = local_snapshot(source)
    if root is None:
        raise ModelError(
            f"The captioner {source!r} is not a local folder and is not in the Hugging Face cache. On a machine with "
            f"network run `hf download {source}` (e.g. Salesforce/blip-image-captioning-base), or pass a local "
            "folder with --captioner."
        )
    return root


def load_captioner(source: str, device: str | None = None) -> Captioner:
    """Load the BLIP captioner at `source` (see `captioner_root`) on `device` (default: the best available).

    Raises ModelError when the weights are missing, damaged (cannot be read, or NaN or infinite values: every caption
    would be empty) or are not a BLIP captioning model.
    """
    from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    root = captioner_root(source)
    again = f"Download it again (`hf download {source}`), or name another captioner."
    if damage := damaged_file(root):
        raise ModelError(f"The captioner {source} is damaged: {damage}. {again}")
    try:
        model = BlipForConditionalGeneration.from_pretrained(root, local_files_only=True)
        processor = BlipProcessor(BlipImageProcessorPil.from_pretrained(root), AutoTokenizer.from_pretrained(root))
    except (OSError, ValueError, TypeError, RuntimeError) as error:  # RuntimeError: weights of other shapes
        raise ModelError(
            f"{root} is not a BLIP captioning model (a transformers folder with BlipForConditionalGeneration weights, "
            f"its tokenizer and preprocessor_config.json, as Salesforce/blip-image-captioning-base): {error}"
        ) from error
    check_finite(model.named_parameters(), f"The captioner {source}", again)
    return Captioner(model.to(pick_device(device)).eval(), processor)


def caption_character(home: Path, name: str, captioner: Captioner, replace: bool = False) -> Character:
    """Caption character `name`'s prepared photos with `captioner` and save the captions; photos the parent already
    captioned keep theirs unless `replace`. Returns the updated character."""
    character = load_character(home, name)
    paths = prepared_photo_paths(home, character)
    wanted = [index for index, photo in enumerate(character.photos) if replace or not photo.caption]
    if not wanted:
        return character
    images = []
    for index in wanted:
        try:
            with Image.open(paths[index]) as image:
                images.append(image.convert("RGB"))
        except OSError as error:
            raise CharacterError(
                f"Cannot read {character.name}'s prepared photo {paths[index].name} ({error}); remove and add "
                f"{character.name} again to redo the crops."
            ) from None
    captions = captioner.caption(images)
    return set_photo_captions(home, character.slug, {i + 1: text for i, text in zip(wanted, captions, strict=True)})
