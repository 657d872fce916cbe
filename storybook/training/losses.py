"""Training objectives: small pure functions, one paper each, sharing tensor-in / tensor-out signatures."""

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr


def diffusion_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the UNet must predict: the noise (Ho et al. 2020) or the velocity (Salimans & Ho 2022, SD 2.x 768)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def offset_noise(noise: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Add a per-channel constant to the noise so the model learns very dark and bright images (Guttenberg 2023)."""
    if strength == 0:
        return noise
    batch, channels = noise.shape[:2]
    shift = torch.randn(batch, channels, 1, 1, generator=generator).to(noise.device, noise.dtype)
    return noise + strength * shift


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Per-sample loss weights min(SNR, gamma) / SNR, clamping easy timesteps (Hang et al. 2023, Min-SNR)."""
    if gamma is None:
        return torch.ones(timesteps.shape, device=timesteps.device)
    snr = compute_snr(scheduler, timesteps)
    clamped = torch.minimum(snr, torch.full_like(snr, gamma))
    if scheduler.config.prediction_type == "v_prediction":
        return clamped / (snr + 1)
    return clamped / snr


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each sample's MSE times its weight; (B, C, H, W) x2, (B,) -> scalar."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def prior_preservation_loss(instance_loss: torch.Tensor, class_loss: torch.Tensor, weight: float) -> torch.Tensor:
    """DreamBooth's objective: the subject's loss plus `weight` times the class images' loss (Ruiz et al. 2022)."""
    return instance_loss + weight * class_loss
