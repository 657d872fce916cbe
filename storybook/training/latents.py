"""The training images as latents: the photos (and class images) resized, encoded by the VAE once and sampled."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

ENCODE_BATCH = 8  # images per VAE call when caching latents


def images_tensor(paths: list[Path], resolution: int) -> torch.Tensor:
    """Image files resized to `resolution`, in [-1, 1]; shape (N, 3, R, R)."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((resolution, resolution), Image.LANCZOS), np.float32)
        images.append(torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(images)


class LatentSource:
    """Latents of a fixed image set: the VAE posterior is computed once (cached) or on every draw (not cached)."""

    def __init__(self, vae, pixels: torch.Tensor, cache: bool):
        self.vae, self.pixels, self.cache = vae, pixels, cache
        self.scale = vae.config.scaling_factor
        if cache:
            self.mean, self.std = self._posterior(pixels)

    def _posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means, stds = [], []
        with torch.no_grad():
            for chunk in pixels.split(ENCODE_BATCH):  # 200 class images at 512 px in one batch would not fit a GPU
                posterior = self.vae.encode(chunk.to(self.vae.device, self.vae.dtype)).latent_dist
                means.append(posterior.mean.float())
                stds.append(posterior.std.float())
        return torch.cat(means), torch.cat(stds)  # (N, 4, h, w) each

    def means(self) -> torch.Tensor:
        """The posterior means of every image, scaled for the UNet; (N, 4, h, w)."""
        return (self.mean if self.cache else self._posterior(self.pixels)[0]) * self.scale

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `batch_size` latents (indices and posterior noise from `generator`), scaled for the UNet; return them
        and which image each came from."""
        indices = torch.randint(len(self.pixels), (batch_size,), generator=generator)
        mean, std = (self.mean[indices], self.std[indices]) if self.cache else self._posterior(self.pixels[indices])
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        return (mean + std * noise) * self.scale, indices
