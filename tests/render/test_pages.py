"""Rendering books on the tiny model: pages drawn once, cached by content, resumed after kill -9, adapters per page."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from storybook import registry
from storybook.book import load_book, save_book
from storybook.errors import ModelError
from storybook.models import TINY_MODEL_FOLDER
from storybook.render.pages import IMAGES_DIR, render_book, with_settings
from storybook.story import book_edits
from storybook.story.stage import StoryRequest, write_story
from storybook.tiny_model import build_tokenizer

pytestmark = pytest.mark.slow


def new_book(home, characters=("Mia", "Rex"), steps=4, **request):
    """An 8-page offline story about Mia (and Rex), set to render in `steps` steps; returns its folder."""
    story = StoryRequest(child="Mia", characters=list(characters), theme="a day at the beach", pages=8, seed=3)
    folder, book = write_story(home, story.model_copy(update=request), "offline")
    save_book(folder, with_settings(book, {"steps": steps}))
    return folder


def pixels(folder, image) -> np.ndarray:
    return np.asarray(Image.open(folder / image).convert("RGB"), dtype=np.int16)


def image_files(folder) -> dict[str, int]:
    """Every picture of the book and its modification time."""
    return {path.name: path.stat().st_mtime_ns for path in (folder / IMAGES_DIR).glob("*.png")}


def test_renders_every_page_once_and_again_only_what_changed(studio):
    folder = new_book(studio)
    report, renderer = render_book(studio, folder)
    book = load_book(folder)
    assert report.drawn == 9 and report.reused == 0  # 8 pages and the cover
    assert all((folder / page.image).is_file() for page in [book.cover, *book.pages])
    assert Image.open(folder / book.pages[0].image).size == (32, 32)  # the tiny model's own size
    drawn = image_files(folder)

    again, _ = render_book(studio, folder, renderer=renderer)
    assert (again.drawn, again.reused) == (0, 9)
    assert image_files(folder) == drawn  # nothing was drawn again

    book = book_edits.edit_page(load_book(folder), 2, text="Mia sees a big wave.")  # text only: same picture
    book = book_edits.edit_page(book, 3, scene=f"{book.character('mia').phrase} building a sandcastle")
    save_book(folder, book)
    edited, _ = render_book(studio, folder, renderer=renderer)
    assert (edited.drawn, edited.reused) == (1, 8)

    save_book(folder, with_settings(load_book(folder), {"steps": 5}))
    restepped, _ = render_book(studio, folder, renderer=renderer)
    assert restepped.drawn == 9  # a setting every picture depends on


def test_same_seed_same_picture_and_a_new_identity_weight_redraws_its_pages(studio):
    folder = new_book(studio)
    render_book(studio, folder)
    first = {page.image: pixels(folder, page.image) for page in load_book(folder).pages}
    for path in (folder / IMAGES_DIR).glob("*.png"):
        path.unlink()
    render_book(studio, folder)
    assert all(np.array_equal(pixels(folder, image), before) for image, before in first.items())

    book = load_book(folder)
    save_book(folder, with_settings(book, {"weights": {"Rex": 0.5}}))
    report, _ = render_book(studio, folder)
    with_rex = sum("rex" in page.characters for page in [book.cover, *book.pages])
    assert 0 < with_rex < 9 and report.drawn == with_rex


def bare_pipeline(home, adapters):
    """The reference: a plain diffusers pipeline with the LoRAs loaded and the renderer's default sampler."""
    pipeline = StableDiffusionPipeline.from_pretrained(TINY_MODEL_FOLDER)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
        pipeline.scheduler.config, algorithm_type="dpmsolver++", use_karras_sigmas=True
    )
    for slug in adapters:
        pipeline.load_lora_weights(home / "characters" / slug / "identity", adapter_name=slug)
    return pipeline


def bare_render(pipeline, page, active) -> np.ndarray:
    if active:
        pipeline.enable_lora()
        pipeline.set_adapters(active)
    else:
        pipeline.disable_lora()
    image = pipeline(
        page.prompt,
        negative_prompt=page.negative_prompt,
        num_inference_steps=4,
        generator=torch.Generator("cpu").manual_seed(page.seed),
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def test_each_page_is_drawn_with_the_identities_of_its_characters(studio):
    folder = new_book(studio)
    book = load_book(folder)
    book = book_edits.edit_page(book, 1, scene="a sunny beach with shells")  # no character
    mia, rex = book.character("mia").phrase, book.character("rex").phrase
    book = book_edits.edit_page(book, 2, scene=f"{mia} and {rex} on the sand")  # both
    book = book_edits.edit_page(book, 3, scene=f"{rex} digging in the sand")  # Rex alone
    save_book(folder, book)
    assert [p.characters for p in book.pages[:3]] == [[], ["mia", "rex"], ["rex"]]
    render_book(studio, folder, batch_size=1)  # one picture per call, as in the reference
    book = load_book(folder)

    reference = bare_pipeline(studio, ["mia", "rex"])
    for page in book.pages[:3]:
        assert np.array_equal(pixels(folder, page.image), bare_render(reference, page, page.characters))
    both = book.pages[1]
    assert not np.array_equal(bare_render(reference, both, ["mia"]), pixels(folder, both.image))  # Rex matters
    assert not np.array_equal(bare_render(reference, both, []), pixels(folder, both.image))


def test_a_render_killed_mid_book_resumes_with_only_the_missing_pictures(studio):
    folder = new_book(studio, steps=40)
    command = [Path(sys.executable).parent / "storybook", "--home", str(studio), "render", str(folder)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(image_files(folder) if (folder / IMAGES_DIR).exists() else {}) < 3 and time.time() < deadline:
        assert process.poll() is None, "the render ended before it could be killed"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    survived = image_files(folder)
    assert 3 <= len(survived) < 9

    load_book(folder)  # book.json is whole
    report, _ = render_book(studio, folder)
    assert report.drawn == 9 - len(survived) and report.reused == len(survived)
    assert {name: image_files(folder)[name] for name in survived} == survived  # kept, not redrawn
    book = load_book(folder)
    assert all(page.image for page in [book.cover, *book.pages])


def test_batched_pictures_match_single_ones(studio):
    folder = new_book(studio)
    render_book(studio, folder, batch_size=1)
    single = {page.image: pixels(folder, page.image) for page in load_book(folder).pages}
    for path in (folder / IMAGES_DIR).glob("*.png"):
        path.unlink()
    render_book(studio, folder, batch_size=4)
    for image, before in single.items():
        assert np.abs(pixels(folder, image) - before).max() <= 2  # the same picture, up to float rounding


def test_candidates_to_choose_from_and_previews(studio):
    folder = new_book(studio)
    report, renderer = render_book(studio, folder, candidates=3, only=[1])
    page = load_book(folder).pages[0]
    assert report.drawn == 3 and len(page.candidates) == 3
    assert page.candidates[0].seed == page.seed and page.image == page.candidates[0].image
    assert len({c.image for c in page.candidates}) == 3
    assert not np.array_equal(pixels(folder, page.candidates[0].image), pixels(folder, page.candidates[1].image))

    chosen = book_edits.choose_candidate(load_book(folder), 1, 2)
    save_book(folder, chosen)
    assert chosen.pages[0].image == page.candidates[1].image and chosen.pages[0].seed == page.candidates[1].seed
    again, _ = render_book(studio, folder, renderer=renderer, only=[1])
    assert again.drawn == 0  # the chosen picture is the page's picture now

    drafts, _ = render_book(studio, folder, renderer=renderer, preview=True)
    book = load_book(folder)
    assert drafts.drawn == 9 and all(p.preview and p.preview != p.image for p in book.pages[:1])
    assert not book.pages[1].image  # drafts are not final pictures


def test_untrained_characters_and_long_prompts_are_reported(home, trained_characters, sample_photos):
    shutil.copytree(trained_characters, home / "characters")
    folder = new_book(home, characters=("Mia",), style="soft watercolor " * 20)
    report, _ = render_book(home, folder, only=[1])
    assert any(w.startswith("page 1: the prompt is") and "(77)" in w for w in report.warnings)

    registry.add_character(home, "Bo", sample_photos, build_tokenizer(), class_noun="teddy bear")
    untrained = new_book(home, characters=("Mia", "Bo"))
    with pytest.raises(ModelError, match="character train bo"):
        render_book(home, untrained)
    assert not (untrained / IMAGES_DIR).exists()


def test_edits_made_during_a_render_are_kept_and_an_interrupted_rerender_never_mixes_settings(studio, tmp_path):
    from storybook.errors import BookError
    from storybook.printing.book_pdf import export_book

    folder = new_book(studio)
    mia = load_book(folder).character("mia").phrase

    def edit_midway(done, total):
        if done == 1:  # another tab edits the book while it renders
            book = book_edits.edit_page(load_book(folder), 5, text="Mia waves at a boat.")
            save_book(folder, book_edits.edit_page(book, 6, scene=f"{mia} holding a red ball"))

    render_book(studio, folder, batch_size=1, progress=edit_midway)
    book = load_book(folder)
    assert book.pages[4].text == "Mia waves at a boat." and book.pages[4].image  # kept, and still drawn
    assert book.pages[5].scene.endswith("holding a red ball") and book.pages[5].image is None  # drawn next time
    assert render_book(studio, folder)[0].drawn == 1

    save_book(folder, with_settings(load_book(folder), {"steps": 3}))

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_book(studio, folder, batch_size=1, progress=stop_after_two)
    assert sum(page.image is not None for page in [load_book(folder).cover, *load_book(folder).pages]) == 2
    with pytest.raises(BookError, match="no picture yet"):
        export_book(folder, tmp_path / "mixed.pdf")  # never old pictures beside new ones


def assert_drawn_as_a_fresh_renderer_draws(home, folder, before, redrawn: str) -> None:
    """Every picture of the book in `folder` equals what a newly loaded renderer draws, and exactly the pages with
    character `redrawn` changed since `before` (the book as it was)."""
    again = load_book(folder)
    fresh = folder.with_name("fresh")
    shutil.copytree(folder, fresh)
    shutil.rmtree(fresh / IMAGES_DIR)
    render_book(home, fresh)
    references = load_book(fresh)
    for old, new, reference in zip(
        [before.cover, *before.pages], [again.cover, *again.pages], [references.cover, *references.pages], strict=True
    ):
        assert np.array_equal(pixels(folder, new.image), pixels(fresh, reference.image))
        assert (old.image == new.image) == (redrawn not in new.characters)


def test_a_character_trained_again_is_drawn_with_its_new_identity(home, trained_characters):
    from storybook.training.loop import train_identity

    shutil.copytree(trained_characters, home / "characters")
    folder = new_book(home)
    _, renderer = render_book(home, folder)
    book = load_book(folder)
    with_rex = [page for page in [book.cover, *book.pages] if "rex" in page.characters]
    quick = {"steps": 6, "num_class_images": 4, "class_image_steps": 4, "checkpoint_every": 50, "seed": 9}
    train_identity(home, "Rex", "lora", overrides=quick, show_progress=False)

    report, _ = render_book(home, folder, renderer=renderer)  # the same loaded renderer
    assert report.drawn == len(with_rex)
    assert_drawn_as_a_fresh_renderer_draws(home, folder, book, redrawn="rex")


def test_a_textual_inversion_identity_replaces_a_lora_in_a_loaded_renderer_and_draws_only_its_pages(
    home, trained_characters
):
    from storybook.training.loop import train_identity

    shutil.copytree(trained_characters, home / "characters")
    folder = new_book(home)
    _, renderer = render_book(home, folder)
    book = load_book(folder)
    for seed in (1, 2):  # Rex's LoRA replaced by Textual Inversion, then that trained again
        train_identity(home, "Rex", "textual-inversion", overrides={"steps": 6, "seed": seed}, show_progress=False)
        render_book(home, folder, renderer=renderer)
    assert renderer.adapters.keys() == {"mia"} and renderer.trained["rex"][1].method == "textual-inversion"
    assert_drawn_as_a_fresh_renderer_draws(home, folder, book, redrawn="rex")


def test_a_setting_that_makes_the_render_fail_is_never_kept_and_no_page_loses_its_picture(studio, tmp_path):
    from storybook.errors import BookError

    folder = new_book(studio)
    render_book(studio, folder)
    drawn = (folder / "book.json").read_text()
    for settings, error in [
        ({"model": str(tmp_path / "no-model-here")}, ModelError),
        ({"width": 12}, BookError),
        ({"guidance": float("nan")}, BookError),
        ({"steps": 10, "bogus": 1}, BookError),  # unknown fields are errors, as in spec files
    ]:
        with pytest.raises(error):
            render_book(studio, folder, settings=settings)
        assert (folder / "book.json").read_text() == drawn, settings  # nothing kept, no picture detached
    with pytest.raises(BookError, match="no page 99: its pages are 1-8, and 0 is the cover"):
        render_book(studio, folder, only=[99])

    report, _ = render_book(studio, folder, settings={"width": 64})
    assert report.drawn == 9 and load_book(folder).render.width == 64  # kept once drawn with
    assert render_book(studio, folder, settings={"width": None})[0].drawn == 0  # back to the model's own size
    assert load_book(folder).render.width is None


def test_settings_for_some_pages_are_refused_one_book_one_size(studio):
    from storybook.errors import BookError

    folder = new_book(studio)
    render_book(studio, folder)
    drawn = (folder / "book.json").read_text()
    for settings in ({"width": 64}, {"steps": 6}, {"scheduler": "euler"}):
        with pytest.raises(BookError, match="Render settings are the whole book's .*leave out --page"):
            render_book(studio, folder, only=[2], settings=settings)
        assert (folder / "book.json").read_text() == drawn
    report, _ = render_book(studio, folder, only=[2], settings={"steps": 4})  # the book's own settings
    assert (report.drawn, report.reused) == (0, 1)


def test_nan_weights_in_an_identity_or_a_base_model_never_give_a_black_page(home, trained_characters, tmp_path):
    shutil.copytree(trained_characters, home / "characters")
    folder = new_book(home)
    poisoned = tmp_path / "poisoned-tiny"  # the tiny model with NaN in its VAE's last layer
    shutil.copytree(TINY_MODEL_FOLDER, poisoned)
    vae = load_file(poisoned / "vae" / "diffusion_pytorch_model.safetensors")
    vae["decoder.conv_out.bias"][0] = float("nan")
    save_file(vae, poisoned / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelError, match="poisoned-tiny drew NaN or infinite values instead of a picture"):
        render_book(home, folder, settings={"model": str(poisoned)})

    lora = home / "characters" / "mia" / "identity" / "pytorch_lora_weights.safetensors"
    weights = load_file(lora)
    weights[next(iter(weights))].view(-1)[0] = float("inf")
    save_file(weights, lora)
    with pytest.raises(ModelError, match="identity of mia is damaged: its weights hold NaN or infinite values"):
        render_book(home, folder)
    assert not list((folder / IMAGES_DIR).glob("*.png")) and load_book(folder).pages[0].image is None
