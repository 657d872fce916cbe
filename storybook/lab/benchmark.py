"""The consistency benchmark: held-out characters x personalization methods x story pages, read by the evaluator.

Each character is registered from rendered "photos" and given its identity through the product's own registry and
`build_identity` (training, image prompt or both); its pages are drawn by the product's renderer. Nothing here is a
shortcut the app does not take. A ceiling row reads the true pictures of the same pages after a round trip through
the base model's VAE: no method that draws through that VAE can read better.
"""

import multiprocessing
import random
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from storybook.book import RenderSettings
from storybook.config import load_config
from storybook.errors import LabError
from storybook.identities import resolve_config
from storybook.lab import world
from storybook.lab.evaluator import Evaluator, load_evaluator
from storybook.lab.metrics import (
    class_drift,
    identity_consistency,
    pairwise_agreement,
    part_match,
    prompt_fidelity,
)
from storybook.memory import peak_rss_bytes
from storybook.models import (
    MINI_MODEL,
    check_model_on_disk,
    load_pipeline,
    load_tokenizer,
    model_family,
    model_fingerprint,
    pick_device,
    unet_parameter_count,
)
from storybook.registry import add_character, identity_folder, set_photo_captions
from storybook.render.renderer import ImageJob, Renderer
from storybook.story.checks import DEFAULT_NEGATIVE_PROMPT
from storybook.training.class_images import class_image_dir, ensure_class_images
from storybook.training.personalize import IdentityMethod, build_identity

# Name -> (identity method, the settings it trains with); None: no identity, the base model with the text description
# only. Prior preservation where the method uses class images; the hypernetwork as the founding paper trained it (the
# photos captioned with the class noun alone) and with the identifier.
METHODS: dict[str, tuple[IdentityMethod, dict] | None] = {
    "description only": None,
    "LoRA + prior": ("lora", {"prior_preservation": True}),
    "LoRA, no prior": ("lora", {"prior_preservation": False}),
    "DreamBooth + prior": ("dreambooth", {"prior_preservation": True}),
    "DreamBooth, no prior": ("dreambooth", {"prior_preservation": False}),
    "IP-Adapter": ("ip-adapter", {}),
    "LoRA + IP-Adapter": ("lora+ip-adapter", {"prior_preservation": True}),
    "Textual Inversion": ("textual-inversion", {}),
    "Hypernetwork (paper's captions)": ("hypernetwork", {"captions": "class"}),
    "Hypernetwork, identifier": ("hypernetwork", {"captions": "identifier"}),
    "Pivotal tuning + prior": ("pivotal", {"prior_preservation": True}),
    "Pivotal tuning + prior, 600 steps": ("pivotal", {"prior_preservation": True, "steps": 600}),
    "Pivotal tuning + prior, staged": (  # AttnDreamBooth's order: 100 steps of embeddings alone, at TI's rate
        "pivotal",
        {"prior_preservation": True, "embedding_steps": 100, "embedding_learning_rate": 5e-3},
    ),
    "Pivotal tuning + IP-Adapter": ("pivotal+ip-adapter", {"prior_preservation": True}),
}
CEILING = "VAE round trip (ceiling)"  # the true pictures through the base model's VAE, read by the evaluator
TRAINED = {  # what each method trains
    "lora": "lora",
    "dreambooth": "dreambooth",
    "lora+ip-adapter": "lora",
    "textual-inversion": "textual-inversion",
    "hypernetwork": "hypernetwork",
    "pivotal": "pivotal",
    "pivotal+ip-adapter": "pivotal",
}
PHOTOS_PER_CHARACTER = 5


@dataclass
class MethodResult:
    """One method's scores, averaged over the benchmark's characters."""

    method: str
    identity: float  # share of pages showing the registered character (attributes AND signature)
    attributes: float  # share of pages with the character's four attributes right
    signature: float  # share of pages with the character's whole signature right
    agreement: float  # share of page pairs showing the same character
    fidelity: float  # share of pages in the setting their prompt asked for
    drift: float  # share of class-noun-only pictures wearing the subject's signature
    train_s: float
    artifact_mb: float
    ready_s: float  # from the photos to the first page drawn: registration, identity, one picture
    peak_mb: float  # peak RSS of the process that built the identity (spawned for it; 0: nothing built)


def benchmark_toddlers(count: int, seed: int = 0, held_out: bool = True) -> list[world.Toddler]:
    """`count` different held-out toddlers (signature and attribute combination never drawn in training), the same
    for the same seed; with `held_out` False, training-family ones instead (combinations of the kind storybook-mini
    trains on, not necessarily among its training pictures)."""
    rng, toddlers = random.Random(f"benchmark-{seed}"), []
    while len(toddlers) < count:
        toddler = world.random_toddler(rng, held_out=held_out)
        if toddler.signature not in {t.signature for t in toddlers}:
            toddlers.append(toddler)
    return toddlers


def register(home: Path, name: str, toddler: world.Toddler, model: str) -> str:
    """Render the toddler's registration photos and register it as `name` with the world's true photo captions (a
    perfect captioner; the methods that train on captions use them); return its identifier token."""
    paths = world.write_photos(home / "photos" / name, toddler, PHOTOS_PER_CHARACTER)
    character = add_character(home, name, paths, load_tokenizer(model, home), "toddler", toddler.description)
    captions = {index + 1: world.photo_caption(toddler, index) for index in range(PHOTOS_PER_CHARACTER)}
    set_photo_captions(home, character.slug, captions)
    return character.token


def prepare_class_images(home: Path, model: str, training: dict, trainer_methods: set[str]) -> None:
    """Generate the prior-preservation class images once, as many as the `trainer_methods` ('lora', 'dreambooth')
    use at most, so that training times compare the training itself."""
    model_path = check_model_on_disk(model, home)
    unet_parameters, family = unet_parameter_count(model_path), model_family(model_path)
    configs = [resolve_config(method, unet_parameters, training, family) for method in sorted(trainer_methods)]
    config = max(configs, key=lambda c: c.num_class_images)
    folder = class_image_dir(home, model_fingerprint(model_path, home), "toddler")
    ensure_class_images(
        lambda: load_pipeline(model, home, pick_device(load_config(home).device), torch.float32)[0],
        folder,
        "toddler",
        config.num_class_images,
        config.class_image_steps,
        False,
    )


def draw_all(
    renderer: Renderer, prompts: list[str], seeds: int, slugs: tuple[str, ...], settings: RenderSettings
) -> list[Image.Image]:
    """Every prompt drawn with seeds 0..seeds-1 (prompt-major order), with the identities of characters `slugs`."""
    jobs = [ImageJob(p, DEFAULT_NEGATIVE_PROMPT, seed, slugs) for p in prompts for seed in range(seeds)]
    pictures = []
    for start in range(0, len(jobs), 16):
        pictures += renderer.draw(jobs[start : start + 16], settings, settings.steps)
    return pictures


def run_benchmark(
    work: Path,
    model: str = MINI_MODEL,
    characters: int = 3,
    seeds: int = 2,
    methods: list[str] | None = None,
    training: dict | None = None,
    steps: int = 25,
    image_scale: float | None = None,
    evaluator: Evaluator | None = None,
    progress: Callable[[str], None] = print,
) -> list[MethodResult]:
    """Measure each method on `characters` held-out toddlers x 12 page prompts x `seeds` seeds, in `work`.

    `methods` are names of METHODS or CEILING. `training` overrides the trainer's defaults for every method (e.g.
    {"steps": 200}; None values are ignored); `image_scale` the image prompts' strength (default: the adapter's).
    Returns one averaged result per method, in `methods` order.
    """
    methods = methods or [*METHODS, CEILING]
    unknown = [name for name in methods if name not in METHODS and name != CEILING]
    if unknown:
        raise LabError(f"Unknown method(s) {unknown}; choose from {[*METHODS, CEILING]}.")
    home = work / "home"
    if any(home.glob("characters/*")):
        raise LabError(f"{work} already holds a benchmark run's characters; give another --work folder.")
    training = {key: value for key, value in (training or {}).items() if value is not None}
    evaluator = evaluator or load_evaluator()
    settings = RenderSettings(model=model, steps=steps)
    prior_methods = {
        TRAINED[m[0]] for m in map(METHODS.get, methods) if m and m[1].get("prior_preservation") and m[0] in TRAINED
    }
    if prior_methods:
        prepare_class_images(home, model, training, prior_methods)
    base = Renderer(home, model)
    scores: dict[str, list[tuple[float, ...]]] = {name: [] for name in methods}
    for number, toddler in enumerate(benchmark_toddlers(characters)):
        for name in methods:
            progress(f"character {number + 1}/{characters}: {name}")
            if name == CEILING:
                pages = evaluator.read(vae_round_trips(base, world.page_scenes(toddler, seeds)))
                # No class pages: the true pictures wear the subject's signature by definition, so drift is not read.
                scores[name].append((*page_scores(pages, [], toddler, seeds), 0.0, 0.0, 0.0, 0.0))
                continue
            method = METHODS[name]
            slug, renderer, train_s, artifact_mb, peak_mb = None, base, 0.0, 0.0, 0.0
            subject = f"a toddler with {toddler.description}"
            started = time.perf_counter()
            if method is not None:  # the story stage writes the token and the parent's description on every page
                slug = f"kid{number}-{name.lower().replace(' ', '').replace(',', '').replace('+', '-')}"
                subject = f"{register(home, slug, toddler, model)} toddler with {toddler.description}"
                overrides = method[1] | training  # the row's settings, and what --train-steps/--train-lr say
                building = time.perf_counter()
                train_s, peak = build_identity_in_subprocess(home, slug, method[0], model, overrides, image_scale)
                started += time.perf_counter() - building - train_s  # the subprocess's start-up is the lab's cost
                peak_mb = peak / 2**20
                artifact_mb = (
                    sum(f.stat().st_size for f in identity_folder(home, slug).rglob("*") if f.is_file()) / 2**20
                )
                if method[0] == "dreambooth":
                    renderer = Renderer(home, model, dreambooth=slug)
                else:
                    base.load_identities([slug])
            prompts = world.page_prompts(subject)
            drawn = (slug,) if slug else ()
            ready_s = time.perf_counter() - started + timed_first_page(renderer, prompts[0], drawn, settings)
            pictures = draw_all(renderer, prompts, seeds, drawn, settings)
            sheet = work / "sheets" / f"character-{number}-{slug.split('-', 1)[1] if slug else 'description'}.png"
            save_sheet(sheet, pictures[::seeds])
            pages = evaluator.read(pictures)
            # The class noun alone, with the identity's weights active: an image prompt adds no weights, so it is off.
            no_image = settings.model_copy(update={"image_scales": {slug: 0.0}} if slug else {})
            class_pages = evaluator.read(draw_all(renderer, world.page_prompts("a toddler"), seeds, drawn, no_image))
            scores[name].append(
                (*page_scores(pages, class_pages, toddler, seeds), train_s, artifact_mb, ready_s, peak_mb)
            )
            if renderer is not base:  # a DreamBooth renderer: its pipeline goes before the next one loads
                renderer.release()
    return [
        MethodResult(name, *(sum(column) / len(column) for column in zip(*scores[name], strict=True)))
        for name in methods
    ]


def build_identity_measured(
    home: Path, slug: str, method: IdentityMethod, model: str, overrides: dict, image_scale: float | None
) -> tuple[float, int]:
    """Build `slug`'s identity in this process; return (seconds, the process's peak RSS in bytes)."""
    started = time.perf_counter()
    build_identity(home, slug, method, model, overrides, None, image_scale, show_progress=False)
    return time.perf_counter() - started, peak_rss_bytes()


def build_identity_in_subprocess(
    home: Path, slug: str, method: IdentityMethod, model: str, overrides: dict, image_scale: float | None
) -> tuple[float, int]:
    """`build_identity_measured` in a fresh process (spawned, not forked), so that the peak memory is the build's
    alone: in one long process the peak only grows with each method measured."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(build_identity_measured, home, slug, method, model, overrides, image_scale).result()
        except BrokenProcessPool:
            raise LabError(f"Building {slug}'s {method} identity: its process died (out of memory?).") from None


def page_scores(pages: list[dict], class_pages: list[dict], toddler: world.Toddler, seeds: int) -> tuple[float, ...]:
    """(identity, attributes, signature, agreement, fidelity, drift) of one character's page readings."""
    page_settings = [s for s in world.page_settings() for _ in range(seeds)]
    return (
        identity_consistency(pages, toddler),
        part_match(pages, toddler, world.ATTRIBUTES),
        part_match(pages, toddler, world.SIGNATURE),
        pairwise_agreement(pages),
        prompt_fidelity(pages, page_settings),
        class_drift(class_pages, toddler),
    )


def timed_first_page(renderer: Renderer, prompt: str, slugs: tuple[str, ...], settings: RenderSettings) -> float:
    """Seconds to draw one page with the characters' identities (the last step to a usable identity)."""
    started = time.perf_counter()
    draw_all(renderer, [prompt], 1, slugs, settings)
    return time.perf_counter() - started


@torch.no_grad()
def vae_round_trips(renderer: Renderer, scenes: list[world.Scene]) -> list[Image.Image]:
    """The true pictures of `scenes`, encoded and decoded by the renderer's VAE (what any method draws through)."""
    pipeline = renderer.pipeline
    size = renderer.native_size
    pixels = world.to_tensor([world.draw_scene(scene, size) for scene in scenes]).to(
        renderer.device, pipeline.vae.dtype
    )
    decoded = pipeline.vae.decode(pipeline.vae.encode(pixels).latent_dist.mean).sample
    return pipeline.image_processor.postprocess(decoded, output_type="pil")


def save_sheet(path: Path, pictures: list[Image.Image]) -> None:
    """Save `pictures` side by side in one row (a contact sheet to look at what was measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = pictures[0].size
    sheet = Image.new("RGB", (width * len(pictures), height))
    for index, picture in enumerate(pictures):
        sheet.paste(picture, (index * width, 0))
    sheet.save(path)


def results_table(results: list[MethodResult]) -> str:
    """The results as a markdown table."""
    lines = [
        "| method | identity consistency | attributes right | signature right | pairwise agreement | prompt fidelity "
        "| class drift | train s | peak RSS MiB | artifact MB | s to first page |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.method} | {r.identity:.0%} | {r.attributes:.0%} | {r.signature:.0%} | {r.agreement:.0%} "
            f"| {r.fidelity:.0%} | {'–' if r.method == CEILING else f'{r.drift:.0%}'} | {r.train_s:.0f} "
            f"| {f'{r.peak_mb:.0f}' if r.peak_mb else '–'} | {r.artifact_mb:.2f} | {r.ready_s:.1f} |"
        )
    return "\n".join(lines)


def results_json(results: list[MethodResult]) -> list[dict]:
    """The results as plain dicts (for JSON)."""
    return [asdict(result) for result in results]
