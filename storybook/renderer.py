"""The renderer: a base pipeline loaded once, each character's identity loaded once as a named adapter.

Per batch of pictures it activates the adapters of the characters drawn (with their weights) and calls the diffusers
pipeline with one fresh CPU generator per picture, so a picture depends on its prompt and seed only, never on what
was drawn before it or beside it in a batch.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from PIL import Image

from storybook.book import RenderSettings, Scheduler
from storybook.errors import ModelError
from storybook.identity import load_identity, read_identity
from storybook.models import load_pipeline, model_fingerprint
from storybook.registry import identity_folder

SCHEDULERS = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
}


@dataclass(frozen=True)
class ImageJob:
    """One picture to draw: the words, the seed, and the characters whose identities are active."""

    prompt: str
    negative_prompt: str
    seed: int
    characters: tuple[str, ...]  # registry slugs


def identity_hash(home: Path, slug: str) -> str:
    """A short hash of the identity's metadata: it changes whenever the identity is trained again."""
    record = identity_folder(home, slug) / "identity.json"
    if not record.is_file():
        raise ModelError(f"{slug} has no trained identity yet: run `storybook character train {slug}` first.")
    return hashlib.sha256(record.read_bytes()).hexdigest()[:16]


def dreambooth_character(home: Path, slugs: list[str]) -> str | None:
    """The one character among `slugs` trained with full DreamBooth, if any (its UNet replaces the base one).

    Raises ModelError when there are two: their fine-tuned UNets cannot be combined.
    """
    full = [slug for slug in slugs if read_identity(identity_folder(home, slug)).method == "dreambooth"]
    if len(full) > 1:
        raise ModelError(
            f"{' and '.join(full)} are both full DreamBooth identities, which replace the whole UNet and cannot be "
            "combined in one book. Train all but one of them with --method lora."
        )
    return full[0] if full else None


class Renderer:
    """A loaded base pipeline (plus at most one DreamBooth identity) that draws pictures with character adapters."""

    def __init__(
        self,
        home: Path,
        model: str,
        dreambooth: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ):
        self.home = home
        self.model = model
        self.dreambooth = dreambooth
        self.pipeline, self.model_path = load_pipeline(model, home, device, dtype)
        self.model_scheduler = self.pipeline.scheduler
        self.scheduler_name: Scheduler = "model"
        self.base_fingerprint = model_fingerprint(self.model_path, home)
        self.fingerprint = self.base_fingerprint  # what every picture depends on: the base and its DreamBooth UNet
        self.adapters: dict[str, str] = {}  # LoRA identities loaded: slug -> identity hash
        self.dreambooth_hash = identity_hash(home, dreambooth) if dreambooth else None
        if dreambooth:
            load_identity(self.pipeline, identity_folder(home, dreambooth), dreambooth, self.base_fingerprint)
            self.fingerprint += "+" + self.dreambooth_hash

    @property
    def device(self) -> torch.device:
        """Where the pipeline runs."""
        return self.pipeline.unet.device

    @property
    def dtype_name(self) -> str:
        """The weights' dtype, e.g. 'float16' (pictures differ between dtypes)."""
        return str(self.pipeline.unet.dtype).removeprefix("torch.")

    @property
    def native_size(self) -> int:
        """The side in pixels the base model was trained at (32 tiny, 512 SD 1.5, 1024 SDXL)."""
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

    def fits(self, model: str, dreambooth: str | None) -> bool:
        """Whether this renderer can draw a book on `model` with DreamBooth identity `dreambooth` (as trained now)
        without reloading."""
        current = identity_hash(self.home, dreambooth) if dreambooth else None
        return (self.model, self.dreambooth, self.dreambooth_hash) == (model, dreambooth, current)

    def load_identities(self, slugs: list[str]) -> None:
        """Load the LoRA identity of each character in `slugs` as an adapter named by its slug, unless that very
        identity is loaded already (a character trained again since is loaded again)."""
        for slug in slugs:
            if slug == self.dreambooth:
                continue
            trained = identity_hash(self.home, slug)
            if self.adapters.get(slug) == trained:
                continue
            metadata = read_identity(identity_folder(self.home, slug))
            if metadata.method == "dreambooth":
                raise ModelError(f"{slug} is a DreamBooth identity; create the renderer with dreambooth={slug!r}.")
            if slug in self.adapters:
                self.pipeline.delete_adapters(slug)
            load_identity(self.pipeline, identity_folder(self.home, slug), slug, self.base_fingerprint)
            self.adapters[slug] = trained

    def use_scheduler(self, name: Scheduler) -> None:
        """Switch the sampler ('model' restores the model's own scheduler)."""
        if name == self.scheduler_name:
            return
        if name == "model":
            self.pipeline.scheduler = self.model_scheduler
        else:
            scheduler_class, options = SCHEDULERS[name]
            self.pipeline.scheduler = scheduler_class.from_config(self.model_scheduler.config, **options)
        self.scheduler_name = name

    def activate(self, characters: tuple[str, ...], weights: dict[str, float]) -> None:
        """Turn on the adapters of `characters` (weight from `weights`, default 1.0) and every other adapter off."""
        active = [slug for slug in characters if slug in self.adapters]
        if not self.adapters:
            return
        if not active:
            self.pipeline.disable_lora()
            return
        self.pipeline.enable_lora()
        self.pipeline.set_adapters(active, adapter_weights=[weights.get(slug, 1.0) for slug in active])

    def size(self, settings: RenderSettings) -> tuple[int, int]:
        """The (width, height) pictures are drawn at under `settings`."""
        return settings.width or self.native_size, settings.height or self.native_size

    def draw(self, jobs: list[ImageJob], settings: RenderSettings, steps: int) -> list[Image.Image]:
        """Draw `jobs` (all with the same characters) in one pipeline call; one fresh CPU generator per picture."""
        assert len({job.characters for job in jobs}) == 1, "a batch shares one set of characters"
        self.use_scheduler(settings.scheduler)
        self.activate(jobs[0].characters, settings.weights)
        width, height = self.size(settings)
        return self.pipeline(
            prompt=[job.prompt for job in jobs],
            negative_prompt=[job.negative_prompt for job in jobs],
            num_inference_steps=steps,
            guidance_scale=settings.guidance,
            width=width,
            height=height,
            generator=[torch.Generator("cpu").manual_seed(job.seed) for job in jobs],
        ).images

    def tokens_over_limit(self, prompt: str) -> int:
        """How many of `prompt`'s tokens CLIP cuts off (0 when it fits its 77-token window)."""
        tokenizer = self.pipeline.tokenizer
        return max(0, len(tokenizer.tokenize(prompt)) + 2 - tokenizer.model_max_length)  # + start and end tokens
