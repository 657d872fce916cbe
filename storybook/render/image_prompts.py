"""The image prompts loaded in a renderer's pipeline: the IP-Adapter a book's characters share and each one's
embedding, loaded and unloaded per character and given a strength per page, as a trained identity is (`MethodPart`'s
load, unload and set_strength in identities/base.py).

diffusers takes an image prompt per pipeline call, not per loaded adapter: `inputs` gives the arguments for the
characters of a batch (their embeddings at their scales, each limited to its own region of the picture when there are
several) and a page without one gets a zero embedding at scale 0, which adds nothing.
"""

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from storybook.book import RenderSettings
from storybook.config import AdapterSource
from storybook.errors import ModelError
from storybook.identities.image_prompt import adapter_fingerprint, adapter_root, load_image_embeds, read_image_prompt
from storybook.registry import identity_folder
from storybook.weights import check_finite, file_tensors


class ImagePrompts:
    """The IP-Adapter loaded into `pipeline` (once a character needs it) and the image prompts of the characters
    loaded, by slug: (the embedding pair on the pipeline's device and in its dtype, the default scale)."""

    def __init__(self, pipeline: DiffusionPipeline, home: Path, model: str):
        self.pipeline, self.home, self.model = pipeline, home, model
        self.adapter: AdapterSource | None = None
        self.loaded: dict[str, tuple[dict[str, torch.Tensor], float]] = {}
        self.no_image: dict[str, torch.Tensor] = {}  # a zero embedding of the loaded adapter's shape
        self.separate_regions = True  # several image prompts on a page: each in its own region (the lab turns it off)
        self.masks: dict[tuple, torch.Tensor] = {}  # region masks by (count, height, width), on the device

    def load(self, slugs: list[str]) -> None:
        """Load the image prompt of each character in `slugs` that has one (and their IP-Adapter), and unload those
        of the others in `slugs` (built again without one).

        Raises ModelError when the characters' image prompts need different IP-Adapters (one per book), or one was
        built with an adapter that changed since.
        """
        records = {slug: read_image_prompt(identity_folder(self.home, slug)) for slug in slugs}
        adapters = {record.adapter.model_dump_json(): record.adapter for record in records.values() if record}
        if len(adapters) > 1:
            sources = ", ".join(adapter.source for adapter in adapters.values())
            raise ModelError(
                f"The characters' image prompts use different IP-Adapters ({sources}): build every character's image "
                "prompt of a book with the same adapter."
            )
        for adapter in adapters.values():
            if adapter != self.adapter:
                check_finite(
                    file_tensors(adapter_root(adapter) / adapter.weight_name),
                    f"The IP-Adapter {adapter.source} ({adapter.weight_name})",
                    "Download it again, or build the image prompts with another adapter.",
                )
        prompts = {}  # every record and embedding checked before anything changes
        for slug, record in records.items():
            if record is None:
                continue
            if record.adapter_fingerprint != adapter_fingerprint(record.adapter, self.home):
                raise ModelError(
                    f"The IP-Adapter {record.adapter.source} changed since {slug}'s image prompt was built: run "
                    f"`storybook character train {slug} --method ip-adapter` again."
                )
            prompts[slug] = (load_image_embeds(identity_folder(self.home, slug)), record.scale)
        if adapters:
            self.use_adapter(*adapters.values())
        unet = self.pipeline.unet
        for slug in slugs:
            if slug not in prompts:
                self.unload(slug)
                continue
            embeds, scale = prompts[slug]
            embeds = {key: value.to(unet.device, unet.dtype) for key, value in embeds.items()}
            self.loaded[slug] = (embeds, scale)
            self.no_image = {key: torch.zeros_like(value) for key, value in embeds.items()}

    def unload(self, slug: str) -> None:
        """Draw `slug` without an image prompt from now on (the adapter stays for the others)."""
        self.loaded.pop(slug, None)

    def use_adapter(self, adapter: AdapterSource) -> None:
        """Load `adapter` (its weights checked by `load`) into the pipeline with diffusers' `load_ip_adapter` (weights
        only: embeddings are computed when a character is built), replacing another one. Raises ModelError when it
        does not fit the base model."""
        if adapter == self.adapter:
            return
        if self.adapter is not None:
            self.pipeline.unload_ip_adapter()
            self.adapter, self.no_image = None, {}
            self.loaded.clear()
        subfolder, _, weight_name = adapter.weight_name.rpartition("/")
        try:
            self.pipeline.load_ip_adapter(str(adapter_root(adapter)), subfolder, weight_name, image_encoder_folder=None)
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            raise ModelError(
                f"The IP-Adapter {adapter.source} ({adapter.weight_name}) does not load into {self.model}: is it an "
                f"adapter for this base model? Build the image prompts again with one that is. Details: {error}"
            ) from error
        self.adapter = adapter

    def inputs(self, characters: tuple[str, ...], count: int, settings: RenderSettings, size: tuple[int, int]) -> dict:
        """Set the adapter's strength for `count` pictures of `characters` drawn under `settings` at `size` (width,
        height) and return the pipeline's arguments: each character's embedding at its scale (the settings' else its
        default), in its own vertical strip of the picture (left to right in page order) when there are several, the
        negative embeddings first under classifier-free guidance. A page without an image prompt gets a zero embedding
        at scale 0. Empty when no adapter is loaded."""
        if self.adapter is None:
            return {}
        drawn = [slug for slug in characters if slug in self.loaded]
        if not drawn:  # diffusers needs an embedding once an adapter is loaded; at scale 0 it adds nothing
            pairs, strengths = [self.no_image], [0.0]
        else:
            pairs = [self.loaded[slug][0] for slug in drawn]
            strengths = [settings.image_scales.get(slug, self.loaded[slug][1]) for slug in drawn]
        positive = torch.stack([pair["positive"][0] for pair in pairs])[None].expand(
            count, *([-1] * pairs[0]["positive"].dim())
        )
        negative = torch.stack([pair["negative"][0] for pair in pairs])[None].expand_as(positive)
        embeds = torch.cat([negative, positive]) if settings.guidance > 1 else positive  # (2B or B, images, D)
        if len(pairs) == 1 or not self.separate_regions:  # one set of image tokens over the whole picture
            self.pipeline.set_ip_adapter_scale(sum(strengths) / len(strengths))
            return {"ip_adapter_image_embeds": [embeds]}
        self.pipeline.set_ip_adapter_scale([strengths])
        masks = self.regions(len(pairs), size)
        return {"ip_adapter_image_embeds": [embeds], "cross_attention_kwargs": {"ip_adapter_masks": [masks]}}

    def regions(self, count: int, size: tuple[int, int]) -> torch.Tensor:
        """The masks of `count` characters' regions for pictures of `size` (width, height): (1, count, h, w) at the
        latents' size, on the pipeline's device and in its dtype, made once. diffusers downsamples a mask to each
        attention layer's size and moves it to the layer's device and dtype in every layer at every step: from a
        full-size fp32 CPU mask that is an interpolation on the CPU and a copy to the GPU each time; from this one, a
        small interpolation where it already is."""
        scale = self.pipeline.vae_scale_factor
        key = (count, size[1] // scale, size[0] // scale)
        if key not in self.masks:
            unet = self.pipeline.unet
            self.masks[key] = region_masks(count, size[0] // scale, size[1] // scale).to(unet.device, unet.dtype)
        return self.masks[key]


def region_masks(count: int, width: int, height: int) -> torch.Tensor:
    """`count` masks that split a `width` x `height` picture into vertical strips, left to right; (1, count, height,
    width) of 0 and 1, as diffusers' `ip_adapter_masks` take them."""
    masks = torch.zeros(1, count, height, width)
    for index in range(count):
        masks[0, index, :, index * width // count : (index + 1) * width // count] = 1
    return masks
