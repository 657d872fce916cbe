"""IP-Adapter weights in the original file layout (h94/IP-Adapter), which diffusers' `load_ip_adapter` reads.

A file holds `image_proj.*` (the basic adapter's ImageProjection: `proj` maps one image embedding to 4 context tokens,
`norm` a LayerNorm over them) and `ip_adapter.<n>.to_k_ip.weight` / `to_v_ip.weight` for every cross-attention layer
of the UNet, numbered 1, 3, 5, ... in the order of `unet.attn_processors` (diffusers' `_convert_ip_adapter_attn_to_
diffusers` reads them back in that order). Used to build storybook-mini's adapter and random-weight adapters of the
real shapes for tests.
"""

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

IMAGE_TOKENS = 4  # the basic IP-Adapter's context tokens per image (diffusers assumes 4 for `proj.weight` files)


def cross_attention_layers(unet: UNet2DConditionModel) -> list[torch.nn.Module]:
    """The UNet's cross-attention modules (`attn2`), in the order IP-Adapter files number them."""
    return [
        unet.get_submodule(name.removesuffix(".processor"))
        for name in unet.attn_processors
        if not name.endswith("attn1.processor")
    ]


def new_adapter_weights(
    unet: UNet2DConditionModel, image_embed_dim: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A fresh adapter for `unet` in the file layout: a random projection (std 0.02) of `image_embed_dim`-wide image
    embeddings, and each layer's to_k_ip / to_v_ip copied from its to_k / to_v, as the IP-Adapter paper starts."""
    width = unet.config.cross_attention_dim
    weights = {
        "image_proj.proj.weight": torch.randn(IMAGE_TOKENS * width, image_embed_dim, generator=generator) * 0.02,
        "image_proj.proj.bias": torch.zeros(IMAGE_TOKENS * width),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    for index, layer in enumerate(cross_attention_layers(unet)):
        number = 2 * index + 1
        weights[f"ip_adapter.{number}.to_k_ip.weight"] = layer.to_k.weight.detach().float().clone()
        weights[f"ip_adapter.{number}.to_v_ip.weight"] = layer.to_v.weight.detach().float().clone()
    return weights


def adapter_weights(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The IP-Adapter loaded into `unet` (by `load_ip_adapter` or `load_adapter_weights`), in the file layout."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    weights = {
        "image_proj.proj.weight": projection.image_embeds.weight,
        "image_proj.proj.bias": projection.image_embeds.bias,
        "image_proj.norm.weight": projection.norm.weight,
        "image_proj.norm.bias": projection.norm.bias,
    }
    for index, layer in enumerate(cross_attention_layers(unet)):
        weights[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = layer.processor.to_k_ip[0].weight
        weights[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = layer.processor.to_v_ip[0].weight
    return {key: value.detach().float().contiguous() for key, value in weights.items()}


def load_adapter_weights(unet: UNet2DConditionModel, weights: dict[str, torch.Tensor]) -> None:
    """Install `weights` (file layout) into `unet` through diffusers' own IP-Adapter loader, as `load_ip_adapter`
    does after reading the file; the UNet then takes `added_cond_kwargs={"image_embeds": [...]}`."""
    state = {"image_proj": {}, "ip_adapter": {}}
    for key, value in weights.items():
        part, name = key.split(".", 1)
        state[part][name] = value
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)


def save_adapter_weights(path: Path, weights: dict[str, torch.Tensor], dtype: torch.dtype = torch.float16) -> None:
    """Write `weights` as an IP-Adapter safetensors file (fp16 by default, as published adapters are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.to(dtype).contiguous() for key, value in weights.items()}, path)
