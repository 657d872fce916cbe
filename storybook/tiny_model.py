"""A tiny Stable-Diffusion-shaped pipeline built from configs, so tests and demos run offline on a CPU.

It has the real components (UNet, VAE, CLIP text encoder, CLIP tokenizer, scheduler) at toy sizes and is saved with
`save_pretrained`, so everything downstream loads it through the same `from_pretrained` path as SD 1.5. The VAE is
briefly trained as an autoencoder on procedural shapes so that latents mean something: an image that a trained
identity pushes toward red really decodes to red.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from storybook.training.losses import diffusion_target

RESOLUTION = 32  # pixels; the VAE halves it, so the UNet works on 16x16 latents
# Whole-word tokens for the words picture-book prompts use most; anything else falls back to byte-level pieces.
PROMPT_WORDS = """
a an the of in on at with and by to under near its his her their one two photo picture book style illustration
watercolor soft toddler child kid baby girl boy man woman dog cat bear teddy ball boat sand sandcastle beach sea
forest park tree bedroom bed bath bathtub snow night sky moon star stars daycare school garden house playing
building reading sleeping running jumping smiling happy little big red orange yellow green blue purple pink brown
black white gray curly straight short long hair shirt raincoat dress hat jacket wearing colorful bright
nsfw nudity violence blood weapon scary horror text watermark signature lowres blurry deformed hands
""".split()  # the last line: the default negative prompt's words, so that it fits in 77 tokens
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def build_tokenizer(words: list[str] = PROMPT_WORDS, whole_words: bool = False) -> CLIPTokenizer:
    """Build a CLIP BPE tokenizer in memory: all 256 byte symbols plus whole-word merges for `words`.

    The tiny model's merges are one chain per word, so a few words that share a pair with another word still split
    in two; `whole_words=True` adds merges, lowest priority last, until every word is a single token.
    """
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [symbol + "</w>" for symbol in symbols]
    merges: list[tuple[str, str]] = []
    for word in sorted(words, key=len, reverse=True):  # long first: short words' merges can't split them
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            merge = (merged, piece)
            merged += piece
            if merge not in merges:
                merges.append(merge)
                vocab_list.append(merged)
    tokenizer = tokenizer_from(vocab_list, merges)
    for word in words if whole_words else []:
        while len(pieces := tokenizer.tokenize(word)) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab_list.append(pieces[0] + pieces[1])
            tokenizer = tokenizer_from(vocab_list, merges)
    return tokenizer


def tokenizer_from(vocab_list: list[str], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    """A CLIP tokenizer with `vocab_list` (then the special tokens) as its vocabulary and these BPE merges."""
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list + SPECIAL_TOKENS))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def text_encoder_config(tokenizer: CLIPTokenizer, width: int = 32, layers: int = 5) -> CLIPTextConfig:
    """The config of a CLIP text encoder matching `tokenizer`: 5 layers, 32 wide (and projecting to 32) unless told
    otherwise."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        projection_dim=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_encoder(tokenizer: CLIPTokenizer, width: int = 32, layers: int = 5) -> CLIPTextModel:
    """A CLIP text encoder matching `tokenizer`: 5 layers, 32 wide unless told otherwise."""
    return CLIPTextModel(text_encoder_config(tokenizer, width, layers))


def build_unet() -> UNet2DConditionModel:
    """A two-level UNet (32, 64 channels) with cross-attention to 32-wide text embeddings, as in diffusers' tests."""
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_vae() -> AutoencoderKL:
    """A two-level VAE (32, 64 channels, 4 latent channels, downsampling by 2)."""
    return AutoencoderKL(
        sample_size=RESOLUTION,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
    )


COLOURS = {  # background colours the tiny UNet learns to follow, as RGB in [0, 1]
    "red": (0.85, 0.15, 0.12),
    "orange": (0.95, 0.55, 0.1),
    "yellow": (0.95, 0.85, 0.2),
    "green": (0.2, 0.7, 0.25),
    "blue": (0.15, 0.35, 0.85),
    "purple": (0.55, 0.25, 0.7),
    "pink": (0.95, 0.6, 0.75),
    "brown": (0.5, 0.3, 0.15),
    "black": (0.05, 0.05, 0.05),
    "white": (0.95, 0.95, 0.95),
}


def procedural_scenes(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """Flat-colour scenes (a named background, a few rectangles and discs) in [-1, 1] with captions such as
    'a blue picture'; images (count, 3, size, size)."""
    rows = torch.arange(size).view(size, 1)
    cols = torch.arange(size).view(1, size)
    names = [list(COLOURS)[i] for i in torch.randint(len(COLOURS), (count,), generator=generator)]
    background = torch.tensor([COLOURS[name] for name in names]) + 0.08 * torch.randn(count, 3, generator=generator)
    images = background.clamp(0, 1).view(count, 3, 1, 1).expand(count, 3, size, size).clone()
    for image in images:
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            x0, y0 = torch.randint(0, size, (2,), generator=generator).tolist()
            extent = int(torch.randint(2, size // 3, (1,), generator=generator))
            if torch.rand(1, generator=generator) < 0.5:
                mask = (rows - y0).abs().le(extent // 2) & (cols - x0).abs().le(extent)
            else:
                mask = (rows - y0) ** 2 + (cols - x0) ** 2 <= (extent // 2) ** 2
            image[:, mask] = torch.rand(3, 1, generator=generator)
    return images * 2 - 1, [f"a {name} picture" for name in names]


def train_vae(vae: AutoencoderKL, steps: int, seed: int) -> None:
    """Fit the VAE as an autoencoder on procedural scenes, then set `scaling_factor` so latents have unit variance.

    It trains on 16x16 scenes (the VAE is convolutional, so colours carry over to 64x64) and decodes the posterior
    mean: ~25 s on 2 CPU cores is enough for colours and shapes to survive a round trip.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    vae.train()
    for _ in range(steps):
        images, _ = procedural_scenes(16, 16, generator)  # (16, 3, 16, 16)
        reconstruction = vae.decode(vae.encode(images).latent_dist.mean).sample
        loss = F.mse_loss(reconstruction, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():
        # Real SD VAEs have a near-zero posterior std; ours only learned the mean, so make its encoder deterministic.
        vae.quant_conv.weight[vae.config.latent_channels :] = 0
        vae.quant_conv.bias[vae.config.latent_channels :] = -30
        latents = vae.encode(procedural_scenes(16, RESOLUTION, generator)[0]).latent_dist.mean  # (16, 4, 16, 16)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))


def train_unet(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    scheduler: DDPMScheduler,
    steps: int,
    seed: int,
) -> None:
    """Teach the UNet (and text encoder) to denoise procedural scenes from their captions: a weak but real
    text-to-image model, so that fine-tuning an identity on it changes what it draws in a measurable way.

    The identity trainer's loss target (`diffusion_target`); its own step, because a base model trains every weight
    from scratch on generated scenes, with none of an identity's photos, class images or method parts."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=1e-3)
    for _ in range(steps):
        images, captions = procedural_scenes(16, RESOLUTION, generator)  # (16, 3, 32, 32)
        # Drop one caption in ten, as SD did, so classifier-free guidance has an unconditional prediction to use.
        captions = ["" if torch.rand(1, generator=generator) < 0.1 else caption for caption in captions]
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor  # (8, 4, 32, 32)
        token_ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, text_encoder(token_ids)[0]).sample
        loss = F.mse_loss(prediction, diffusion_target(scheduler, latents, noise, timesteps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def build_tiny_pipeline(seed: int = 0, vae_steps: int = 300, unet_steps: int = 200) -> StableDiffusionPipeline:
    """Build the tiny pipeline with deterministic weights for `seed`: the VAE, then the UNet, briefly trained."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet()
    vae = build_vae()
    # v-prediction (as in SD 2.x): a briefly trained model then draws blurry colour fields instead of pure noise.
    schedule = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
    }
    train_vae(vae, vae_steps, seed)
    train_unet(unet, vae, text_encoder, tokenizer, DDPMScheduler(**schedule), unet_steps, seed)
    scheduler = DPMSolverMultistepScheduler(**schedule)
    return assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline from its parts, with no safety checker (models built here have none)."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny(directory: Path, seed: int = 0) -> Path:
    """Write the tiny pipeline to `directory` in diffusers' folder layout (safetensors) and return the folder."""
    return saved(build_tiny_pipeline(seed), directory)


def saved(pipeline, directory: Path) -> Path:
    """Write `pipeline` to `directory` in diffusers' folder layout (safetensors) and return the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """An SDXL-shaped pipeline at toy sizes with random weights, for tests of the SDXL paths (it draws noise): two
    CLIP text encoders (the second with a projection, whose pooled output conditions the UNet with the size and crop
    time ids), a UNet with `text_time` added conditioning and linear projections, and a VAE that asks to be upcast,
    as SDXL's does. The sizes are those of diffusers' own SDXL pipeline tests."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids embedded 8 wide, and the pooled text
        cross_attention_dim=64,  # the two text encoders' hidden states side by side
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=build_vae(),
        text_encoder=CLIPTextModel(text_encoder_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(text_encoder_config(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def make_tiny_sdxl(directory: Path, seed: int = 0) -> Path:
    """Write the tiny SDXL-shaped pipeline to `directory` in diffusers' folder layout and return the folder."""
    return saved(build_tiny_sdxl_pipeline(seed), directory)
