"""What one optimiser step's loss is computed from: the photos' (and class images') cached latents and the
conditioning of their captions, noised, predicted and weighted (Min-SNR, prior preservation)."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from PIL import Image

from storybook.identities.families import Conditioning, concatenated, pipeline_family
from storybook.identities.training_config import TrainingConfig
from storybook.registry import Character
from storybook.training import losses
from storybook.training.class_images import class_prompt
from storybook.training.latents import LatentSource


def photo_captions(character: Character, config: TrainingConfig) -> list[str]:
    """The caption each photo trains under: with the identifier ('a photo of zorv toddler') or the class noun alone
    ('a photo of toddler'), followed by the photo's own caption where the config trains on them and it has one."""
    bare = character.instance_prompt if config.captions == "identifier" else class_prompt(character.class_noun)
    own = [photo.caption if config.photo_captions else "" for photo in character.photos]
    return [f"{bare}, {caption}" if caption else bare for caption in own]


def image_sides(paths: list[Path]) -> torch.Tensor:
    """The side in pixels of each (square) image file before it is resized for training; (N,). SDXL is told it as
    the picture's original size (its time ids)."""
    sides = []
    for path in paths:
        with Image.open(path) as image:
            sides.append(min(image.size))
    return torch.tensor(sides)


@dataclass
class Batches:
    """What one optimiser step's loss is computed from: the photos' latents and captions, and with prior preservation
    the class images' (the second half of each batch)."""

    pipeline: DiffusionPipeline
    character: Character
    config: TrainingConfig
    resolution: int  # of the photos and class images, in pixels
    instance_latents: LatentSource
    class_latents: LatentSource | None
    photo_sides: torch.Tensor  # (photos,): each photo's side before resizing
    class_sides: torch.Tensor | None = None  # (class images,)
    cached_embeddings: tuple[Conditioning, Conditioning | None] | None = None  # while the text encoders are frozen
    captions: list[str] = field(init=False)  # the caption of each photo (`photo_captions`)
    distinct: list[str] = field(init=False)  # each caption once, however many photos share it: encoded once
    caption_of_photo: torch.Tensor = field(init=False)  # (photos,): the index in `distinct` of each photo's caption

    def __post_init__(self) -> None:
        """Each photo's caption, and which distinct caption it is."""
        self.captions = photo_captions(self.character, self.config)
        self.distinct = sorted(set(self.captions))
        self.caption_of_photo = torch.tensor([self.distinct.index(caption) for caption in self.captions])

    def text_embeddings(self) -> tuple[Conditioning, Conditioning | None]:
        """The conditioning of each distinct photo caption, and of the class caption (one row; None without prior
        preservation), encoded the way the pipeline's family conditions its UNet."""
        if self.cached_embeddings is not None:
            return self.cached_embeddings
        encode = pipeline_family(self.pipeline).encode
        photos = encode(self.pipeline, self.distinct)
        if self.class_latents is None:
            return photos, None
        return photos, encode(self.pipeline, [class_prompt(self.character.class_noun)])

    def sized(self, conditioning: Conditioning, sides: torch.Tensor) -> Conditioning:
        """`conditioning` with the family's size inputs for pictures of `sides` (SDXL's time ids)."""
        size_inputs = pipeline_family(self.pipeline).size_inputs
        extra = size_inputs(sides, self.resolution, conditioning.embeddings)
        return Conditioning(conditioning.embeddings, conditioning.added | extra)

    def photo_conditioning(self, photo_indices: torch.Tensor) -> Conditioning:
        """The conditioning of each photo drawn (len(photo_indices) rows): its caption's, and its size."""
        captions = self.text_embeddings()[0][self.caption_of_photo[photo_indices]]
        return self.sized(captions, self.photo_sides[photo_indices])

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning]:
        """One batch: (B or 2B, 4, h, w) latents of photos (then class images when preserving the prior) and their
        conditioning (B or 2B rows)."""
        latents, photo_indices = self.instance_latents.sample(self.config.batch_size, generator)
        conditioning = self.photo_conditioning(photo_indices)
        if self.class_latents is not None:
            class_latents, class_indices = self.class_latents.sample(self.config.batch_size, generator)
            class_caption = self.text_embeddings()[1].expand(self.config.batch_size)
            latents = torch.cat([latents, class_latents])
            conditioning = concatenated([conditioning, self.sized(class_caption, self.class_sides[class_indices])])
        return latents, conditioning


def batch_loss(unet, batches: Batches, scheduler: DDPMScheduler, generator: torch.Generator) -> torch.Tensor:
    """The denoising loss of one batch: noised latents, the UNet's prediction, Min-SNR weights, and DreamBooth's prior
    preservation when there are class images. Called under the run's autocast, captions' encoding included."""
    config = batches.config
    latents, conditioning = batches.draw(generator)
    device = unet.device
    latents = latents.to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    noise = losses.offset_noise(noise, config.offset_noise, generator)
    timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(latents),), generator=generator).to(device)
    prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, **conditioning.unet_inputs()).sample
    target = losses.diffusion_target(scheduler, latents, noise, timesteps)
    weights = losses.min_snr_weights(scheduler, timesteps, config.snr_gamma)
    if batches.class_latents is None:
        return losses.weighted_mse(prediction, target, weights)
    b = config.batch_size
    return losses.prior_preservation_loss(
        losses.weighted_mse(prediction[:b], target[:b], weights[:b]),
        losses.weighted_mse(prediction[b:], target[b:], weights[b:]),
        config.prior_loss_weight,
    )


def fixed_noise_loss(unet, latents: torch.Tensor, conditioning: Conditioning, scheduler: DDPMScheduler) -> float:
    """Denoising loss on `latents` at 8 evenly spaced timesteps with fixed noise (seed 0): unlike the per-step
    training loss, which swings with the random timesteps, it is comparable before and after training. The 8
    timesteps go through the UNet as one batch on the CPU (fewer, larger calls), one at a time on a card."""
    generator = torch.Generator("cpu").manual_seed(0)
    timesteps = torch.linspace(50, scheduler.config.num_train_timesteps - 50, 8).long()
    noises = [torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype) for _ in timesteps]
    per_call = len(timesteps) if latents.device.type == "cpu" else 1
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(timesteps), per_call):
            noise = torch.cat(noises[start : start + per_call])
            clean = latents.repeat(per_call, *[1] * (latents.dim() - 1))
            t = timesteps[start : start + per_call].repeat_interleave(len(latents)).to(latents.device)
            repeated = concatenated([conditioning] * per_call)
            prediction = unet(scheduler.add_noise(clean, noise, t), t, **repeated.unet_inputs()).sample
            target = losses.diffusion_target(scheduler, clean, noise, t)
            weights = torch.ones(len(clean), device=latents.device)
            total += losses.weighted_mse(prediction, target, weights).item() * per_call
    return total / len(timesteps)
