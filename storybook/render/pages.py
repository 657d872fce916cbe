"""Rendering a book: the cover's and every page's picture, cached by content, saved as it goes so that runs resume.

Each picture is stored as <book>/images/<key>.png, where the key hashes everything the picture depends on: the base
model's weights, each identity drawn and its weight, the prompt, negative prompt and seed, and the settings (steps,
guidance, size, scheduler, dtype). Rendering again draws only pictures whose key has no file yet, so an edited page
or a changed setting redraws just what it changed, and a run stopped by Ctrl-C or kill -9 resumes with at most the
batch in flight lost. book.json is updated after every batch, keeping edits made meanwhile.

Where a safety checker is loaded (see render/safety.py) every picture passes it before it is stored: a flagged one
is drawn again with the next seeds, a few times at most, and what happened is reported; a picture flagged every time
is not stored, so its page has no picture and the book cannot be exported until the page is changed.
"""

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from storybook import registry
from storybook.book import Book, Candidate, Page, RenderSettings, book_file, load_book, save_book
from storybook.config import SAFETY_OFF
from storybook.errors import BookError, ModelError, describe_problems
from storybook.identities.image_prompt import read_image_prompt
from storybook.identities.training_config import SMALL_MODEL_PARAMETERS
from storybook.models import TINY_MODEL
from storybook.render.renderer import ImageJob, PictureSource, Renderer, dreambooth_character, picture_size
from storybook.storage import MINI_MODEL, atomic_write_bytes, slugify
from storybook.story.book_edits import cover_page

IMAGES_DIR = "images"
KEY_VERSION = 1  # bump when the renderer changes what a key's picture looks like
# How pages with several image prompts split them into regions: 2, masks made at the latents' size (1, at the
# picture's, drew slightly other pictures). Part of those pages' keys only: every other picture keeps its key.
REGIONS_VERSION = 2
CANDIDATE_SEED_STRIDE = 1_000_003  # candidate k of a page draws with seed + k * stride; candidate 0 is the page
SAFETY_REDRAWS = 3  # the next seeds tried when the safety checker flags a picture
OWN_MODELS = (TINY_MODEL, MINI_MODEL)  # built here from code, on pictures of flat colours and a toy world


@dataclass
class Target:
    """A picture wanted for a page (the cover is a page too), where it is stored, and how to draw it."""

    page: tuple  # the page's `drawing` when the run started: which page of book.json the picture belongs to
    label: str  # "cover", "page 3": for reports
    job: ImageJob
    image: str  # relative to the book folder
    identities: dict[str, str]  # the hash of each drawn character's identity (export checks they are still current)


def drawing(page: Page) -> tuple:
    """What a page's pictures depend on within a book: its prompt, negative prompt, characters and seed."""
    return (page.prompt, page.negative_prompt, tuple(page.characters), page.seed)


@dataclass
class RenderReport:
    """What a render did."""

    drawn: int
    reused: int
    warnings: list[str]
    withheld: list[str]  # the pictures (labels) the safety checker flagged at every seed tried: none was stored


def with_settings(book: Book, overrides: dict) -> Book:
    """`book` with its render settings changed by `overrides` (weights by character name are merged in).

    Raises BookError for a bad value or a weight for a character the book does not have.
    """
    changes = dict(overrides)
    for field in ("weights", "image_scales"):
        if field in changes:
            merged = dict(getattr(book.render, field))
            for name, value in changes[field].items():
                merged[book.character(slugify(name)).slug] = value
            changes[field] = merged
    try:
        settings = RenderSettings.model_validate(book.render.model_dump() | changes)
    except ValidationError as error:
        raise BookError(f"Bad render settings, nothing was changed: {describe_problems(error)}.") from None
    return book.model_copy(update={"render": settings})


def candidate_seed(seed: int, candidate: int) -> int:
    """The seed of a page's candidate number `candidate` (0 is the page's own seed)."""
    return seed + candidate * CANDIDATE_SEED_STRIDE


def identity_key(slug: str, identities: dict[str, str], settings: RenderSettings) -> list:
    """What a picture depends on of one character: its identity's hash, weight and image-prompt scale (when set;
    keys of pictures drawn before image prompts existed stay the same)."""
    key = [identities[slug], settings.weights.get(slug, 1.0)]
    return key + [settings.image_scales[slug]] if slug in settings.image_scales else key


def picture_key(
    job: ImageJob,
    source: PictureSource,
    steps: int,
    identities: dict[str, str],
    book: Book,
    image_prompted: frozenset[str] = frozenset(),
) -> str:
    """The content hash naming the picture of `job` drawn by a renderer of `source`: it changes whenever anything the
    picture depends on changes. `image_prompted`: the characters with an image prompt (several on one page are drawn
    in regions)."""
    settings = book.render
    content = {
        "version": KEY_VERSION,
        "model": source.fingerprint,
        "dtype": source.dtype_name,
        "identities": {slug: identity_key(slug, identities, settings) for slug in job.characters},
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "steps": steps,
        "guidance": settings.guidance,
        "size": picture_size(settings, source.native_size),
        "scheduler": settings.scheduler,
    }
    if source.safety_fingerprint:  # another checker may pass another picture; keys without one stay as they were
        content["safety_checker"] = source.safety_fingerprint
    if len(image_prompted & set(job.characters)) > 1:
        content["regions"] = REGIONS_VERSION
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]


def open_renderer(home: Path, book: Book, renderer: Renderer | None = None, **load_options) -> Renderer:
    """`renderer` when it can draw `book` (same model, same DreamBooth identity, same safety setting), else a newly
    loaded one: `renderer` is released first, so two pipelines are never on the device at once.

    `load_options` (device, dtype) go to Renderer. Raises ModelError for untrained characters.
    """
    check_trained(home, book)
    slugs = [character.slug for character in book.characters]
    dreambooth = dreambooth_character(home, slugs)
    if renderer is None or not renderer.fits(book.render.model, dreambooth):
        if renderer is not None:
            renderer.release()
        renderer = Renderer(home, book.render.model, dreambooth, **load_options)
    renderer.load_identities(slugs)
    return renderer


def check_trained(home: Path, book: Book) -> None:
    """Raises ModelError naming the book's characters that have no identity yet, with the commands to build them."""
    if untrained := [c.slug for c in book.characters if not registry.is_trained(home, c.slug)]:
        commands = " and ".join(f"`storybook character train {slug}`" for slug in untrained)
        raise ModelError(f"{', '.join(untrained)}: no trained identity yet. Run {commands} first.")


def check_page_numbers(book: Book, only: list[int] | None) -> None:
    """Raises BookError when `only` names a page the book does not have (0 is the cover)."""
    if only and (unknown := sorted(set(only) - set(range(len(book.pages) + 1)))):
        raise BookError(
            f"The book has no page {', '.join(map(str, unknown))}: its pages are 1-{len(book.pages)}, and 0 is the "
            "cover."
        )


def unscreened_warning(model: str) -> str:
    """The warning for pictures of base `model` that no safety checker screened."""
    return (
        f"No safety checker screened these pictures: {model} ships none. For a children's book name one with "
        "`storybook config --safety-checker` (e.g. CompVis/stable-diffusion-safety-checker), or say "
        "`--safety-checker off` for a model you trust."
    )


def needs_safety_warning(source: PictureSource, setting: str | None, model: str) -> bool:
    """Whether pictures of `source` under the config's safety `setting` should carry `unscreened_warning`: no
    checker, not turned off, and a model that is not one storybook built."""
    return source.safety_fingerprint is None and setting != SAFETY_OFF and model not in OWN_MODELS


@dataclass
class PicturePlan:
    """The pictures a render of a book wants: the book (its cover composed), each picture's target, the steps, the
    hash of each character's identity, and warnings about prompts too long for the text encoder."""

    book: Book
    targets: list[Target]
    steps: int
    identities: dict[str, str]
    warnings: list[str]


def plan_pictures(
    home: Path,
    book: Book,
    source: PictureSource,
    over_limit: Callable[[str], int],
    preview: bool = False,
    candidates: int = 1,
    only: list[int] | None = None,
) -> PicturePlan:
    """The pictures `book` wants from a renderer of `source`: every page's (0 is the cover) or those in
    `only`, drafts with `preview`, `candidates` seeds per page. `over_limit(prompt)` counts the tokens the text
    encoder would cut off. Raises BookError for a page number the book does not have."""
    check_page_numbers(book, only)
    if book.cover is None:
        book.cover = cover_page(book)
    identities = {character.slug: registry.identity_hash(home, character.slug) for character in book.characters}
    image_prompted = frozenset(slug for slug in identities if read_image_prompt(registry.identity_folder(home, slug)))
    steps = book.render.preview_steps if preview else book.render.steps
    targets, too_long = [], {}
    for number, page in [(0, book.cover)] + list(enumerate(book.pages, start=1)):
        if only is not None and number not in only:
            continue
        label = f"page {number}" if number else "cover"
        for what, words in (("prompt", page.prompt), ("negative prompt", page.negative_prompt)):
            if over := over_limit(words):
                too_long.setdefault((what, over), []).append(label)
        for candidate in range(candidates):
            job = ImageJob(
                page.prompt, page.negative_prompt, candidate_seed(page.seed, candidate), tuple(page.characters)
            )
            image = f"{IMAGES_DIR}/{picture_key(job, source, steps, identities, book, image_prompted)}.png"
            drawn_identities = {slug: identities[slug] for slug in page.characters}
            targets.append(Target(drawing(page), label, job, image, drawn_identities))
    warnings = [
        f"{', '.join(labels)}: the {what} is {over} tokens longer than the text encoder reads (77), so its end is "
        "ignored" + (": shorten the scene, the characters' descriptions or the style." if what == "prompt" else ".")
        for (what, over), labels in too_long.items()
    ]
    return PicturePlan(book, targets, steps, identities, warnings)


def default_batch_size(renderer: Renderer) -> int:
    """Pictures per pipeline call: 4 where batching pays, 1 where it does not (measured, see bench/RESULTS.md).

    It pays on a GPU, and on the CPU for small UNets, whose calls are dominated by overhead (the tiny model: 0.31
    against 0.60 s a page). A full-size UNet on the CPU is compute-bound: a batch of 4 at 512 px was 15% slower per
    picture, and would lose more work when a run is killed.
    """
    small = sum(p.numel() for p in renderer.pipeline.unet.parameters()) < SMALL_MODEL_PARAMETERS
    return 4 if renderer.device.type == "cuda" or small else 1


def attach(
    targets: list[Target], folder: Path, cover: Page, settings: RenderSettings, preview: bool, candidates: int
) -> None:
    """Point the pages of book.json at the pictures of `targets` that exist on disk, and save it with the `settings`
    they were drawn with.

    book.json is read again first, so edits made while the render runs are kept; a page edited since the run began
    no longer matches its targets and is left alone. A page whose picture (or draft) is not drawn yet under the
    current settings loses its old one, so that an interrupted re-render never prints a mix of old and new pictures.
    """
    book = load_book(folder)
    book.render = settings
    if book.cover is None:
        book.cover = cover
    for page in [book.cover, *book.pages]:
        wanted = [t for t in targets if t.page == drawing(page)]
        if not wanted:
            continue
        drawn = [t for t in wanted if (folder / t.image).exists()]
        own = next((t.image for t in drawn if t.job.seed == page.seed), None)
        if preview:
            page.preview = own
        else:
            page.image = own
            page.identities = wanted[0].identities if own else {}
        if candidates > 1:
            page.candidates = [Candidate(seed=t.job.seed, image=t.image) for t in drawn]
    save_book(folder, book)


def render_book(
    home: Path,
    folder: Path,
    *,
    renderer: Renderer | None = None,
    preview: bool = False,
    candidates: int = 1,
    only: list[int] | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    settings: dict | None = None,
    **load_options,
) -> tuple[RenderReport, Renderer]:
    """Draw the pictures of the book in `folder` that are not drawn yet, with the settings in its book.json changed
    by `settings` (see `with_settings`).

    `preview` draws fast low-step drafts (page.preview); `candidates` draws that many seeds per page (page.candidates);
    `only` limits the run to those page numbers (0 is the cover), with the book's own settings: settings that change
    them draw every page. `progress(done, total)` is called after each batch.
    book.json changes only once a picture is drawn (or found drawn) with the new settings: a setting that makes the
    render fail is never kept, and no page loses its picture to it.
    Returns what was done and the renderer, to reuse for the next book. Raises BookError and ModelError.
    """
    if preview and candidates > 1:
        raise BookError("Candidates are for choosing a final picture: render them without --preview.")
    book = load_book(folder)
    book_file(folder, IMAGES_DIR)  # pictures are written there: a symlink out of a book someone sent is refused
    if settings:
        changed = with_settings(book, settings)
        if only and changed.render != book.render:
            raise BookError(
                "Render settings are the whole book's (one book, one picture size): to draw with other settings, "
                "render every page (leave out --page); to redraw some pages, leave out the settings."
            )
        book = changed
    check_page_numbers(book, only)  # before any model loads
    renderer = open_renderer(home, book, renderer, **load_options)
    plan = plan_pictures(home, book, renderer.source, renderer.tokens_over_limit, preview, candidates, only)
    targets, steps = plan.targets, plan.steps
    missing = [target for target in targets if not (folder / target.image).exists()]
    if not missing:
        attach(targets, folder, book.cover, book.render, preview, candidates)
    batches = batched(missing, batch_size or default_batch_size(renderer))
    done = len(targets) - len(missing)
    safety_notes, withheld = [], []
    for batch in batches:
        pictures = renderer.draw([t.job for t in batch], book.render, steps)
        jobs, labels = [t.job for t in batch], [t.label for t in batch]
        for target, (picture, note) in zip(
            batch, screened_pictures(renderer, jobs, labels, pictures, book.render, steps), strict=True
        ):
            safety_notes += [note] if note else []
            if picture is None:
                withheld.append(target.label)
                continue
            save_png(folder / target.image, picture)
        attach(targets, folder, book.cover, book.render, preview, candidates)
        done += len(batch)
        if progress:
            progress(done, len(targets))
    warnings = plan.warnings
    if needs_safety_warning(renderer.source, renderer.safety_setting, book.render.model):
        warnings.append(unscreened_warning(book.render.model))
    report = RenderReport(len(missing) - len(withheld), len(targets) - len(missing), warnings + safety_notes, withheld)
    return report, renderer


def withheld_message(labels: list[str]) -> str:
    """What to say when the safety checker withheld the pictures of `labels`."""
    return (
        f"The safety checker withheld the pictures of {', '.join(labels)} at every seed tried, so the book cannot be "
        "exported yet: change those pages' scenes (`storybook story edit BOOK PAGE --scene ...`) and render again."
    )


def screened_pictures(
    renderer: Renderer,
    jobs: list[ImageJob],
    labels: list[str],
    pictures: list[Image.Image],
    settings: RenderSettings,
    steps: int,
) -> list[tuple[Image.Image | None, str]]:
    """Each picture of `jobs` (of pages `labels`) as the renderer's safety checker lets it through: itself when it
    passes (or there is no checker), else `screened`'s; with the note for the report ('' when nothing was flagged)."""
    flags = renderer.safety.flagged(pictures) if renderer.safety else [False] * len(pictures)
    return [
        screened(renderer, job, label, settings, steps) if flagged else (picture, "")
        for job, label, picture, flagged in zip(jobs, labels, pictures, flags, strict=True)
    ]


def screened(
    renderer: Renderer, job: ImageJob, label: str, settings: RenderSettings, steps: int
) -> tuple[Image.Image | None, str]:
    """For picture `job` (of page `label`) that the renderer's safety checker flagged: the picture of the first of
    the next SAFETY_REDRAWS seeds that it passes, or None when it flags every one; and the note for the report."""
    seeds = [job.seed + offset for offset in range(1, SAFETY_REDRAWS + 1)]
    for seed in seeds:
        redrawn = renderer.draw([replace(job, seed=seed)], settings, steps)[0]
        if not renderer.safety.flagged([redrawn])[0]:
            return redrawn, (
                f"{label}: the safety checker flagged the picture of seed {job.seed}; it was drawn again with seed "
                f"{seed}, which passed."
            )
    return None, (
        f"{label}: the safety checker flagged the pictures of seeds {job.seed}-{seeds[-1]}, so no picture was placed "
        "and the book cannot be exported yet: change the page's scene (`storybook story edit BOOK PAGE --scene ...`) "
        "and render again."
    )


def batched(targets: list[Target], size: int) -> list[list[Target]]:
    """Split `targets` into batches of up to `size` pictures that share the same characters (pages in order within
    each group of characters)."""
    groups: dict[tuple[str, ...], list[Target]] = {}
    for target in targets:
        groups.setdefault(target.job.characters, []).append(target)
    return [group[start : start + size] for group in groups.values() for start in range(0, len(group), size)]


def save_png(path: Path, picture: Image.Image) -> None:
    """Write `picture` as a PNG at `path`, atomically."""
    data = io.BytesIO()
    picture.save(data, format="PNG")
    atomic_write_bytes(path, data.getvalue())
