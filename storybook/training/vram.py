"""GPU memory a run needs, estimated before it runs: from the model's parameter counts (read from its configs on the
meta device, nothing loaded) and the run's settings, the way accelerate's memory estimator counts weights, gradients
and optimiser states, with activation figures calibrated on published measurements.

Sources of the figures (GiB as nvidia-smi reports them):
- SD 1.x DreamBooth on a T4 at 512 px, latents and text embeddings cached, memory-efficient attention
  (ShivamShrirao/diffusers, examples/dreambooth/README.md, the table "Tested on Tesla T4 GPU"): fp16, batch 1,
  gradient checkpointing, 8-bit Adam 9.92; fp32 the same 10.08; batch 2 10.4; without checkpointing 11.17, batch 2
  13.67; checkpointing with torch's AdamW 15.79; neither 17.7. The activations per picture below are that table's
  batch-2 minus batch-1 rows (0.48 with checkpointing, 2.50 without); every other row is a prediction checked in
  tests/training/test_vram.py.
- SDXL full fine-tune at 1024 px, batch 1, Adafactor fused into the backward pass (kohya-ss/sd-scripts pull request
  1259): 10 GB with bf16 weights, 16.4 GB with fp32 ones.
- SDXL LoRA with checkpointing, cached latents and text encoder outputs, an 8-bit optimiser, rank 4-8: "can be done
  with 8GB GPU memory (10GB recommended)" (kohya-ss/sd-scripts README, "Tips for SDXL training").
Activations scale with the latent positions times the UNet's first channel width, from SD 1.5's at 512 px (64 x 64
x 320): SDXL at 1024 px has 4x the positions at the same widths (320/640/1280), storybook-mini 1/80 of them.
"""

import json
from dataclasses import dataclass

from storybook.identities import METHODS
from storybook.identities.base import ModelShape
from storybook.identities.lora import TEXT_TARGETS, UNET_CONV_TARGETS, UNET_TARGETS
from storybook.identities.training_config import TrainingConfig
from storybook.models import model_family, model_folder

GIB = 2**30
CUDA_CONTEXT = int(0.5 * GIB)  # torch's CUDA context and kernels, which nvidia-smi counts and the allocator does not
FRAGMENTATION = 1.10  # what torch's caching allocator reserves beyond what it hands out
HALF, FULL = 2, 4  # bytes per value
SD15_UNITS = 64 * 64 * 320  # SD 1.5's latent positions at 512 px times its first channel width
# Saved activations per training picture per unit of (latent positions x first width), half precision (fp32: twice),
# by checkpointing: SD 1.5's measured 2.50 GiB without, 0.48 GiB with checkpointing at 512 px.
TRAINING_ACTIVATIONS = {False: 2.50 * GIB / SD15_UNITS, True: 0.48 * GIB / SD15_UNITS}
# Drawing, per latent row (classifier-free guidance draws two rows a picture) per unit, half precision: a generous
# bound of 0.1 GiB for SD 1.5's UNet at 512 px with scaled-dot-product attention. Not yet measured (bench/gpu.py
# reports the peak of a two-character SDXL page beside this estimate).
DRAWING_ACTIVATIONS = 0.10 * GIB / SD15_UNITS
DRAWS_VAE_IN_FP32 = {"sd": False, "sdxl": True}  # SDXL's pipeline upcasts a VAE whose config asks; SD's does not
DECODE_PER_MEGAPIXEL = 3.0 * GIB  # the VAE decoding one fp32 picture of 1024 x 1024 px (halved in fp16)
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw-8bit": 2.0, "adafactor": 0.01}  # state per trained parameter (fp32 weights)


# The public models' shapes, counted from their configs on the meta device (tests/training/test_vram.py counts them).
SD15_SHAPE = ModelShape(
    family="sd",
    native_size=512,
    latent_side=64,
    base_channels=320,
    unet=859_520_964,
    text_encoders=(123_060_480,),
    vae=83_653_863,
    vae_upcast=True,
    token_embeddings=37_945_344,
    lora_per_rank=199_296,
    locon_per_rank=714_240,
    text_lora_per_rank=73_728,
    hypernetwork=21_939_840,
    largest_tensor=29_491_200,
)
SDXL_SHAPE = ModelShape(
    family="sdxl",
    native_size=1024,
    latent_side=128,
    base_channels=320,
    unet=2_567_463_684,
    text_encoders=(123_060_480, 694_659_840),
    vae=83_653_863,
    vae_upcast=True,
    token_embeddings=37_945_344,
    lora_per_rank=1_451_520,
    locon_per_rank=1_535_360,
    text_lora_per_rank=401_408,
    hypernetwork=49_962_240,  # over its widths, though the method trains on SD 1.x/2.x only
    largest_tensor=29_491_200,
)
REFERENCE_SHAPES = {"sd": SD15_SHAPE, "sdxl": SDXL_SHAPE}
FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL"}


@dataclass(frozen=True)
class MemoryNeed:
    """A run's GPU memory by what holds it (bytes) and its peaks."""

    weights: int  # resident: trained and frozen weights
    optimizer: int  # optimiser state
    gradients: int
    activations: int  # saved for the backward pass (with the half-precision copies of fp32 weights)
    sampling: int = 0  # the sample grid at a checkpoint: frozen parts back on the card and drawing (beyond weights)

    @property
    def allocated(self) -> int:
        """Peak of what torch hands out (torch.cuda.max_memory_allocated): the saved activations are freed during
        the backward pass as the gradients fill, so the larger of the two counts."""
        return self.weights + self.optimizer + max(self.activations, self.gradients, self.sampling)

    @property
    def on_card(self) -> int:
        """What the run takes of the card (nvidia-smi's figure): the peak, the allocator's reserve, the context."""
        return int(self.allocated * FRAGMENTATION) + CUDA_CONTEXT


def activation_units(shape: ModelShape, size: int) -> float:
    """Latent positions times the UNet's first width at `size` px: what activations scale with."""
    return shape.latent_side**2 * shape.base_channels * (size / shape.native_size) ** 2


def gib(count: int) -> str:
    """`count` bytes in GiB with one decimal, e.g. '9.9 GiB'."""
    return f"{count / GIB:.1f} GiB"


def training_need(
    shape: ModelShape, config: TrainingConfig, resolution: int | None = None, sample_grids: bool = True
) -> MemoryNeed:
    """The GPU memory of a training run of `config` on a model of `shape` at `resolution` px (default its own): the
    frozen UNet in the run's precision, frozen text encoders and VAE off the card once their outputs are cached
    (storybook's loop), the trained weights in fp32 (bf16 with full_bf16), their gradients (one tensor's at a time
    with fused_backward) and optimiser state, the activations of the batch (twice the pictures with prior
    preservation's class images) and, with `sample_grids`, drawing a sample picture at a checkpoint. What the method
    trains and keeps on the card is its part's (storybook/identities/)."""

    part = METHODS[config.method]
    half = config.mixed_precision != "no"
    frozen = HALF if half else FULL
    trained = part.trained_parameters(shape, config)
    trained_bytes = HALF if config.full_bf16 else FULL
    weights = trained * trained_bytes + (0 if part.whole_model else shape.unet * frozen)
    weights += part.resident_text_bytes(shape, config, frozen)
    vae_bytes = FULL if shape.vae_upcast or not half else HALF
    if not config.cache_latents:
        weights += shape.vae * vae_bytes
    gradients = (shape.largest_tensor if config.fused_backward else trained) * trained_bytes
    optimizer = int(trained * OPTIMIZER_BYTES[config.optimizer])
    pictures = config.batch_size * (2 if config.prior_preservation and config.num_class_images else 1)
    units = activation_units(shape, resolution or shape.native_size)
    activations = TRAINING_ACTIVATIONS[config.gradient_checkpointing] * units * pictures
    activations *= 1 if half else 2
    if part.whole_model and half and not config.gradient_checkpointing and not config.full_bf16:
        activations += trained * HALF  # autocast's half copies of the weights, kept for the backward pass
    if config.grad_accum > 1 and not config.fused_backward:
        activations += gradients  # the next batch's forward pass runs while the gradients so far are held
    sampling = 0
    if sample_grids:  # prompts encoded once at the start: the VAE comes back to decode, one picture at a time
        parked_vae = shape.vae * vae_bytes if config.cache_latents else 0
        sampling = parked_vae + drawing_need(shape, frozen, resolution or shape.native_size, 1, vae_bytes)
    return MemoryNeed(int(weights), optimizer, int(gradients), int(activations), int(sampling))


def drawing_need(shape: ModelShape, dtype_bytes: int, size: int, pictures: int, vae_bytes: int) -> int:
    """Activations of drawing `pictures` of `size` px with guidance (two latent rows each) and decoding them one at
    a time (VAE slicing), in bytes."""
    rows = DRAWING_ACTIVATIONS * activation_units(shape, size) * 2 * pictures * dtype_bytes / HALF
    return int(rows + DECODE_PER_MEGAPIXEL * (size * size / 2**20) * vae_bytes / FULL)


def render_need(shape: ModelShape, dtype_bytes: int, size: int | None = None, batch: int = 1) -> MemoryNeed:
    """The GPU memory of drawing a batch of pages: every part's weights in the drawing dtype (SDXL's VAE upcast to
    fp32 to decode, as its pipeline does), and the drawing's activations."""
    vae_bytes = FULL if shape.vae_upcast and DRAWS_VAE_IN_FP32[shape.family] else dtype_bytes
    weights = (shape.unet + sum(shape.text_encoders)) * dtype_bytes + shape.vae * vae_bytes
    activations = drawing_need(shape, dtype_bytes, size or shape.native_size, batch, vae_bytes)
    return MemoryNeed(int(weights), 0, 0, activations)


def model_shape(model_path: str) -> ModelShape:
    """The shape of the base model in folder `model_path` (a hub id resolves to its cached snapshot), counted from
    its configs on the meta device: nothing is loaded. Raises ModelError when a config is missing."""
    import torch
    import transformers
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    folder = model_folder(model_path, ["model_index.json", "*/config.json"])
    index = json.loads((folder / "model_index.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae_config = AutoencoderKL.load_config(folder / "vae")
        vae = AutoencoderKL.from_config(vae_config)
        encoders = [
            getattr(transformers, index[name][1])(transformers.AutoConfig.from_pretrained(folder / name))
            for name in ("text_encoder", "text_encoder_2")
            if index.get(name) and index[name][1]
        ]

    def count(module: torch.nn.Module) -> int:
        return sum(parameter.numel() for parameter in module.parameters())

    def per_rank(module: torch.nn.Module, targets: list[str]) -> int:
        """Parameters of a rank-1 LoRA on `module`'s layers named by `targets` (A: in x 1, B: 1 x out)."""
        total = 0
        for name, layer in module.named_modules():
            if not any(name == target or name.endswith(f".{target}") for target in targets):
                continue
            if isinstance(layer, torch.nn.Linear):
                total += layer.in_features + layer.out_features
            elif isinstance(layer, torch.nn.Conv2d):
                total += layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels
        return total

    widths = {layer.to_k.in_features for layer in unet.modules() if isinstance(layer, Attention)}
    return ModelShape(
        family=model_family(model_path),
        native_size=unet.config.sample_size * 2 ** (len(vae_config["block_out_channels"]) - 1),
        latent_side=unet.config.sample_size,
        base_channels=unet.config.block_out_channels[0],
        unet=count(unet),
        text_encoders=tuple(count(encoder) for encoder in encoders),
        vae=count(vae),
        vae_upcast=bool(vae_config.get("force_upcast", True)),
        token_embeddings=encoders[0].get_input_embeddings().weight.numel(),
        lora_per_rank=per_rank(unet, UNET_TARGETS),
        locon_per_rank=per_rank(unet, UNET_CONV_TARGETS),
        text_lora_per_rank=sum(per_rank(encoder, TEXT_TARGETS) for encoder in encoders),
        hypernetwork=sum(2 * (4 * width * width + 3 * width) for width in widths),
        largest_tensor=max(parameter.numel() for parameter in unet.parameters()),
    )
