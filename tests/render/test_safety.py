"""Safety for children's pages: a flagged picture is drawn again with the next seed and reported, never placed
silently; the checker is the model's own or the one the config names, loaded in diffusers' format."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from storybook.book import load_book
from storybook.config import load_config
from storybook.errors import BookError, ModelError
from storybook.models import TINY_MODEL_FOLDER
from storybook.printing.book_pdf import export_book
from storybook.render.configure import update_config
from storybook.render.pages import SAFETY_REDRAWS, render_book
from storybook.render.renderer import ImageJob, Renderer
from storybook.render.safety import SafetyChecker, load_safety_checker
from tests.render.test_pages import new_book, pixels

pytestmark = pytest.mark.slow


def write_checker(folder, flags_everything: bool):
    """A random-weight StableDiffusionSafetyChecker (CLIP vision at toy size) and its CLIP image processor, saved as
    diffusers saves them; its thresholds make it flag every picture, or none."""
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(vision_config=vision | {"image_size": 32, "patch_size": 4}, projection_dim=16)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        threshold = -10.0 if flags_everything else 10.0  # a cosine similarity is above -10 and below 10
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(10.0)
    checker.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def flagging(flagged_pictures: list[np.ndarray]):
    """A stub checker flagging exactly the pictures whose pixels are among `flagged_pictures`."""

    def check(pictures: list[Image.Image]) -> list[bool]:
        return [any(np.array_equal(pixels_of(p), f) for f in flagged_pictures) for p in pictures]

    return check


def pixels_of(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), dtype=np.int16)


def test_a_flagged_picture_is_drawn_again_with_the_next_seed_and_reported(studio):
    folder = new_book(studio)
    report, renderer = render_book(studio, folder)
    assert report.withheld == [] and not any("safety" in warning for warning in report.warnings)  # the tiny model's
    book = load_book(folder)
    unchecked = {page.seed: pixels(folder, page.image) for page in [book.cover, *book.pages]}
    chosen = book.pages[1]

    renderer.safety = SafetyChecker(flagging([unchecked[chosen.seed]]), "a stub", "stub")
    report, _ = render_book(studio, folder, renderer=renderer)
    assert report.drawn == 9 and report.withheld == []  # every key names the checker now: all drawn again
    assert (
        f"page 2: the safety checker flagged the picture of seed {chosen.seed}; it was drawn again with seed "
        f"{chosen.seed + 1}, which passed." in report.warnings
    )
    screened = load_book(folder)
    for page in [screened.cover, *screened.pages]:
        same = np.array_equal(pixels(folder, page.image), unchecked[page.seed])
        assert same == (page.seed != chosen.seed)
    next_seed = ImageJob(chosen.prompt, chosen.negative_prompt, chosen.seed + 1, tuple(chosen.characters))
    redrawn = renderer.draw([next_seed], screened.render, screened.render.steps)[0]
    assert np.array_equal(pixels(folder, screened.pages[1].image), pixels_of(redrawn))


def test_a_picture_flagged_at_every_seed_is_never_placed_and_the_book_cannot_be_exported(studio, tmp_path):
    folder = new_book(studio)
    _, renderer = render_book(studio, folder)
    drawn = []

    def flags_everything(pictures):
        drawn.extend(pictures)
        return [True] * len(pictures)

    renderer.safety = SafetyChecker(flags_everything, "a stub", "stub")
    report, _ = render_book(studio, folder, renderer=renderer, only=[3])
    assert report.drawn == 0 and report.withheld == ["page 3"]
    assert len(drawn) == 1 + SAFETY_REDRAWS  # the picture and the next seeds, each shown to the checker
    page = load_book(folder).pages[2]
    assert any(
        warning.startswith(f"page 3: the safety checker flagged the pictures of seeds {page.seed}-")
        for warning in report.warnings
    )
    assert page.image is None  # the old picture is detached too: it was not drawn with this checker
    with pytest.raises(BookError, match="page 3 of .* no picture yet"):
        export_book(folder, tmp_path / "book.pdf")


def test_the_configured_checker_loads_in_diffusers_format_and_a_missing_one_is_refused(home, tmp_path):
    for flags_everything in (True, False):
        folder = write_checker(tmp_path / f"checker-{flags_everything}", flags_everything)
        update_config(home, {"safety_checker": str(folder)})
        renderer = Renderer(home, "tiny")
        assert renderer.safety.source == str(folder) and renderer.fits("tiny", None)
        picture = Image.new("RGB", (32, 32), (200, 40, 40))
        assert renderer.safety.flagged([picture, picture]) == [flags_everything] * 2
    with pytest.raises(ModelError, match="not on this machine"):
        update_config(home, {"safety_checker": str(tmp_path / "nothing-here")})
    assert load_config(home).safety_checker == str(folder)  # nothing changed
    update_config(home, {"safety_checker": "off"})
    assert not renderer.fits("tiny", None)  # a loaded renderer (the app's) is replaced: the setting changed
    assert Renderer(home, "tiny").safety is None


def test_a_model_that_ships_a_checker_uses_its_own_and_one_left_out_of_the_download_is_named(home, tmp_path):
    model = shutil.copytree(TINY_MODEL_FOLDER, tmp_path / "with-checker")
    index = json.loads((model / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"ships a safety checker that is not on this machine: .*--include"):
        load_safety_checker(None, str(model), home, torch.device("cpu"), torch.float32)

    write_checker(model / "safety_checker", flags_everything=True)
    (model / "feature_extractor").mkdir()
    shutil.move(model / "safety_checker" / "preprocessor_config.json", model / "feature_extractor")
    checker = load_safety_checker(None, str(model), home, torch.device("cpu"), torch.float32)
    assert checker.source == str(model) and checker.flagged([Image.new("RGB", (32, 32))]) == [True]
    update_config(home, {"safety_checker": str(model / "safety_checker")})  # a pipeline's folder names one too
    assert Renderer(home, "tiny").safety.fingerprint == checker.fingerprint
    assert load_safety_checker(None, str(TINY_MODEL_FOLDER), home, torch.device("cpu"), torch.float32) is None
