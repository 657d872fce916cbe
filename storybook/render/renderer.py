"""The renderer: a base pipeline loaded once, each character's identity loaded once as a named adapter.

Per batch of pictures it activates the adapters of the characters drawn (with their weights), passes the image
embeddings of the characters with an image prompt (IP-Adapter, `image_prompts.py`; each limited to its own region
when several share a page) and calls the diffusers pipeline with one fresh CPU generator per picture, so a picture
depends on its prompt and seed only, never on what was drawn before it or beside it in a batch.

One renderer holds the GPU at a time: a renderer that cannot draw the next book is released (its pipeline freed)
before another loads (`open_renderer` in pages.py), and a DreamBooth UNet is given to `from_pretrained` in place of
the base one, which never loads.
"""

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from PIL import Image

from storybook.book import RenderSettings, Scheduler
from storybook.config import load_config
from storybook.errors import ModelError
from storybook.identities import METHODS, checked_identity, load_identity, unload_identity
from storybook.identities.dreambooth import components as dreambooth_components
from storybook.identities.record import IdentityMetadata, read_identity
from storybook.models import load_pipeline, model_fingerprint, parse_device, pick_device, pick_dtype, resolve_model
from storybook.registry import identity_folder, identity_hash
from storybook.render.image_prompts import ImagePrompts
from storybook.render.safety import checker_fingerprint, checker_in_use, load_safety_checker

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


@dataclass(frozen=True)
class PictureSource:
    """What every picture a renderer draws depends on beyond its page: the base model's weights (and its DreamBooth
    UNet), the dtype, the model's own picture size and the safety checker's weights."""

    fingerprint: str
    dtype_name: str  # e.g. 'float16' (pictures differ between dtypes)
    native_size: int  # the side in pixels the base model was trained at (32 tiny, 512 SD 1.5, 1024 SDXL)
    safety_fingerprint: str | None  # None: no checker screens the pictures


def picture_source(
    home: Path, model: str, dreambooth: str | None, device: str | None = None, dtype: str | None = None
) -> PictureSource:
    """The PictureSource a Renderer(home, model, dreambooth, device, dtype) would have, read from the files alone
    (nothing loads but configs): what a driver plans pictures with before workers draw them. A `device` named is
    taken as the kind the workers have, whether this machine has one or not."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    config = load_config(home)
    model_path = resolve_model(model, home)
    dreambooth_hash = identity_hash(home, dreambooth) if dreambooth else None
    fingerprint = with_dreambooth(model_fingerprint(model_path, home), dreambooth_hash)
    torch_device = parse_device(device) if device else pick_device(config.device)
    torch_dtype = pick_dtype(torch_device, dtype or config.dtype)
    unet = UNet2DConditionModel.load_config(model_path, subfolder="unet")
    vae = AutoencoderKL.load_config(model_path, subfolder="vae")
    native_size = unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
    checker = checker_in_use(config.safety_checker, model_path)
    safety = checker_fingerprint(checker[0][0], home) if checker else None
    return PictureSource(fingerprint, str(torch_dtype).removeprefix("torch."), native_size, safety)


def with_dreambooth(base_fingerprint: str, dreambooth_hash: str | None) -> str:
    """What pictures depend on of the base model: its UNet weights' fingerprint, and a DreamBooth identity's hash when
    one replaces that UNet."""
    return f"{base_fingerprint}+{dreambooth_hash}" if dreambooth_hash else base_fingerprint


def picture_size(settings: RenderSettings, native_size: int) -> tuple[int, int]:
    """The (width, height) pictures are drawn at under `settings` by a model of `native_size` pixels."""
    return settings.width or native_size, settings.height or native_size


def tokens_beyond(tokenizer, prompt: str) -> int:
    """How many of `prompt`'s tokens a CLIP `tokenizer`'s 77-token window cuts off (0 when it fits)."""
    return max(0, len(tokenizer.tokenize(prompt)) + 2 - tokenizer.model_max_length)  # + start and end tokens


def has_weights(home: Path, slug: str) -> bool:
    """Whether the character's identity has trained weights (any trained method), not only an image prompt."""
    return (identity_folder(home, slug) / "identity.json").is_file()


def dreambooth_character(home: Path, slugs: list[str]) -> str | None:
    """The one character among `slugs` trained with full DreamBooth, if any (its UNet replaces the base one).

    Raises ModelError when there are two: their fine-tuned UNets cannot be combined.
    """
    full = [
        slug
        for slug in slugs
        if has_weights(home, slug) and read_identity(identity_folder(home, slug)).method == "dreambooth"
    ]
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
        self.model_path = resolve_model(model, home)
        self.base_fingerprint = model_fingerprint(self.model_path, home)
        config = load_config(home)
        run_device = pick_device(device or config.device)  # the arguments, else the data root's config
        drawing_dtype = pick_dtype(run_device, dtype or config.dtype)
        replaced = {}  # a DreamBooth identity's UNet (and text encoders), loaded instead of the base ones
        if dreambooth:
            folder = identity_folder(home, dreambooth)
            unet_config = UNet2DConditionModel.load_config(self.model_path, subfolder="unet")
            checked_identity(folder, unet_config["cross_attention_dim"], self.base_fingerprint)
            replaced = dreambooth_components(folder, drawing_dtype)
        self.pipeline, _ = load_pipeline(model, home, run_device, drawing_dtype, replaced)
        if self.device.type != "cpu":  # a GPU's memory: decode a batch one picture at a time, big ones in tiles
            self.pipeline.vae.enable_slicing()
            self.pipeline.vae.enable_tiling()
        self.model_scheduler = self.pipeline.scheduler
        self.scheduler_name: Scheduler = "model"
        self.trained: dict[str, tuple[str, IdentityMetadata]] = {}  # trained identities loaded: slug -> (hash, record)
        self.image_prompts = ImagePrompts(self.pipeline, home, model)  # and their IP-Adapter, once one needs it
        # The safety checker every picture of a book passes (None: off, or the model ships none and none is named).
        self.safety_setting = config.safety_checker
        self.safety = load_safety_checker(self.safety_setting, self.model_path, home, self.device, self.dtype)
        self.dreambooth_hash = identity_hash(home, dreambooth) if dreambooth else None
        # What every picture depends on of the model: the base and its DreamBooth UNet.
        self.fingerprint = with_dreambooth(self.base_fingerprint, self.dreambooth_hash)

    def release(self) -> None:
        """Free the pipeline (and the safety checker and embeddings on the device), so that another renderer can
        load into the memory it held; this renderer draws nothing afterwards (`fits` says no)."""
        self.pipeline = self.safety = None
        self.trained.clear()
        self.image_prompts = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def adapters(self) -> dict[str, str]:
        """The identities loaded with a LoRA adapter, switched on per page: slug -> identity hash."""
        return {slug: digest for slug, (digest, record) in self.trained.items() if METHODS[record.method].lora_adapter}

    @property
    def device(self) -> torch.device:
        """Where the pipeline runs."""
        return self.pipeline.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype."""
        return self.pipeline.unet.dtype

    @property
    def dtype_name(self) -> str:
        """The weights' dtype, e.g. 'float16' (pictures differ between dtypes)."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def native_size(self) -> int:
        """The side in pixels the base model was trained at (32 tiny, 512 SD 1.5, 1024 SDXL)."""
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

    @property
    def source(self) -> PictureSource:
        """What every picture this renderer draws depends on beyond its page (part of each picture's key)."""
        safety = self.safety.fingerprint if self.safety else None
        return PictureSource(self.fingerprint, self.dtype_name, self.native_size, safety)

    def fits(self, model: str, dreambooth: str | None) -> bool:
        """Whether this renderer can draw a book on `model` with DreamBooth identity `dreambooth` (as trained now)
        under the data root's safety checker setting (as it is now) without reloading."""
        if self.pipeline is None:
            return False
        current = identity_hash(self.home, dreambooth) if dreambooth else None
        settings = (self.model, self.dreambooth, self.dreambooth_hash, self.safety_setting)
        return settings == (model, dreambooth, current, load_config(self.home).safety_checker)

    def load_identities(self, slugs: list[str]) -> None:
        """Load the identity of each character in `slugs`: trained weights the way their method loads (a LoRA as an
        adapter named by its slug, Textual Inversion as its identifier's embeddings, a hypernetwork as hooks), an image
        prompt's embedding (and its IP-Adapter); an identity loaded already is kept (one trained again is reloaded).

        Raises ModelError when the characters' image prompts need different IP-Adapters (one per book).
        """
        self.image_prompts.load(slugs)
        for slug in slugs:
            if slug == self.dreambooth:
                continue
            loaded = self.trained.get(slug)
            current = identity_hash(self.home, slug) if has_weights(self.home, slug) else None
            if loaded is not None and loaded[0] == current:
                continue
            if loaded is not None:  # trained again, or built again as an image prompt alone: the old one must go
                unload_identity(self.pipeline, loaded[1], slug)
                del self.trained[slug]
            if current is None:
                continue
            metadata = read_identity(identity_folder(self.home, slug))
            if metadata.method == "dreambooth":
                raise ModelError(f"{slug} is a DreamBooth identity; create the renderer with dreambooth={slug!r}.")
            self.trained[slug] = (
                current,
                load_identity(self.pipeline, identity_folder(self.home, slug), slug, self.base_fingerprint),
            )

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
        """Turn on the identities of `characters` that act on every page they are loaded in (LoRAs, hypernetworks),
        at their weight from `weights` (default 1.0), and every other one off."""
        for slug, (_, record) in self.trained.items():
            if set_strength := METHODS[record.method].set_strength:
                set_strength(self.pipeline, slug, weights.get(slug, 1.0) if slug in characters else 0.0)
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
        return picture_size(settings, self.native_size)

    def draw(self, jobs: list[ImageJob], settings: RenderSettings, steps: int) -> list[Image.Image]:
        """Draw `jobs` (all with the same characters) in one pipeline call; one fresh CPU generator per picture.

        Raises ModelError when the pictures come out as NaN or infinite values (what draws a black page).
        """
        assert len({job.characters for job in jobs}) == 1, "a batch shares one set of characters"
        self.use_scheduler(settings.scheduler)
        self.activate(jobs[0].characters, settings.weights)
        width, height = self.size(settings)
        pixels = self.pipeline(
            prompt=[job.prompt for job in jobs],
            negative_prompt=[job.negative_prompt for job in jobs],
            num_inference_steps=steps,
            guidance_scale=settings.guidance,
            width=width,
            height=height,
            generator=[torch.Generator("cpu").manual_seed(job.seed) for job in jobs],
            output_type="np",
            **self.image_prompts.inputs(jobs[0].characters, len(jobs), settings, (width, height)),
        ).images  # (B, H, W, 3) in [0, 1], NaN where the numbers broke down
        if not np.isfinite(pixels).all():
            drawn = ", ".join(jobs[0].characters) or "no character"
            raise ModelError(
                f"{self.model} drew NaN or infinite values instead of a picture (with {drawn}), so nothing was kept: "
                "the weights of the base model or of an identity drawn are damaged, or "
                f"{self.dtype_name} overflowed (SDXL's VAE does in float16: try --dtype fp32)."
            )
        return self.pipeline.numpy_to_pil(pixels)

    def tokens_over_limit(self, prompt: str) -> int:
        """How many of `prompt`'s tokens CLIP cuts off (0 when it fits its 77-token window)."""
        tokenizer = self.pipeline.tokenizer
        return tokens_beyond(tokenizer, self.pipeline.maybe_convert_prompt(prompt, tokenizer))  # multi-vector words
