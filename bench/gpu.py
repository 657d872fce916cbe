"""GPU benchmark: LoRA training and rendering on SD-1.5-shaped and SDXL-shaped models, in one command.

The models have the public architectures (SD 1.5: an 860 M UNet at 512 px; SDXL: a 2.6 B UNet with two text encoders
at 1024 px) and random weights, built on the GPU from their configs: nothing is downloaded. For each model:
- LoRA training through `storybook character train`'s own loop (`train_identity`: cached latents and text
  embeddings, no prior preservation), bf16 and fp16, with and without gradient checkpointing: seconds per step
  (median after a warm-up) and peak CUDA memory; against a plain loop that encodes the photo and the caption at every
  step, as diffusers' example scripts do, in the same precision (the ratio: storybook's s/step over the plain loop's).
- Rendering a 12-page book and its cover with two LoRA characters through `render_book` at batch 1 and 4 against a
  bare loop of pipeline calls (bench/render.py's workload, one render each way).
- The memory plan against the card: a full DreamBooth step on SD 1.5 (bf16, checkpointing, torch's AdamW) and a
  masked two-character SDXL page (two image prompts, each in its region), each with its peak memory beside the plan's
  estimate of it (storybook/training/vram.py); the training rows carry the plan's estimate too.
Each part runs in its own subprocess; the section of bench/RESULTS.md (`## GPU`) is rewritten as soon as a part is
measured, so a run cut short keeps what it finished. The whole call stops at `--budget` seconds (default 480, the
8 minutes it is meant to take on one H100/H200-class GPU): a part that would start after it is reported as skipped,
one still running is stopped. On a machine without CUDA it says so and exits 0.

Usage: python bench/gpu.py [--train-steps 10] [--render-steps 10] [--budget 480]
"""

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

from render import prepare_book
from render import run_one as render_run_one
from train import (
    MARKER,
    WARMUP_STEPS,
    build_sd15_shaped,
    run_in_subprocess,
    sd15_text_config,
    sd_shaped_vae,
    section_header,
    write_section,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark never reaches a model hub

SECTION = "## GPU"
DEVICE = "cuda"  # where the plain loop runs (a CPU smoke run of this script's code sets "cpu")
PRECISIONS = ("bf16", "fp16")


def sdxl_unet():
    """A UNet with SDXL base 1.0's architecture (2.6 B parameters) and random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
    )


def sdxl_text_configs(tokenizer):
    """The configs of SDXL's text encoders (CLIP ViT-L, as SD 1.5's, and OpenCLIP ViT-bigG with projection), with
    `tokenizer`'s special ids."""
    from transformers import CLIPTextConfig

    second = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return sd15_text_config(tokenizer), second


def build_sdxl_shaped(folder: Path) -> Path:
    """Save a pipeline with SDXL base 1.0's architecture (UNet, VAE, CLIP ViT-L and OpenCLIP ViT-bigG text encoders)
    and random weights, in fp16, to `folder`; return the folder."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from storybook.tiny_model import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    first, second = sdxl_text_configs(tokenizer)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    pipeline = StableDiffusionXLPipeline(
        sd_shaped_vae(1024, 0.13025),
        CLIPTextModel(first),
        CLIPTextModelWithProjection(second),
        tokenizer,
        tokenizer,
        sdxl_unet(),
        scheduler,
        add_watermarker=False,
    )
    pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


def storybook_training(
    home: Path, model: str, precision: str, checkpointing: bool, steps: int, method: str = "lora"
) -> dict:
    """s/step and peak CUDA memory (from the first step on) of a `method` run of `train_identity` on `model`, for a
    new character in data root `home` (shared by the runs, so the model's weights are hashed once), and the memory
    plan's estimate of that peak."""
    import torch

    from storybook.registry import add_character
    from storybook.sample_photos import write_sample_photos
    from storybook.tiny_model import build_tokenizer
    from storybook.training.loop import StepReport, train_identity
    from storybook.training.vram import model_shape, training_need

    name = f"Mia {method} {precision} {'on' if checkpointing else 'off'}"
    add_character(home, name, write_sample_photos(home / "photos"), build_tokenizer())
    stamps: list[float] = []

    def on_step(report: StepReport) -> None:
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    settings = {
        "steps": steps,
        "mixed_precision": precision,
        "gradient_checkpointing": checkpointing,
        "prior_preservation": False,
        "batch_size": 1,
        "grad_accum": 1,
        "optimizer": "adamw",
        "checkpoint_every": steps + 1,
    }
    torch.cuda.reset_peak_memory_stats()
    metadata = train_identity(
        home, name, method, model, settings, show_progress=False, on_step=on_step, sample_grids=False
    )
    intervals = [later - earlier for earlier, later in pairwise(stamps)][WARMUP_STEPS - 1 :]
    estimate = training_need(model_shape(model), metadata.config, sample_grids=False).allocated
    return {
        "s_per_step": statistics.median(intervals),
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "estimate_bytes": estimate,
    }


def plain_training(home: Path, model: str, precision: str, steps: int) -> dict:
    """s/step and peak CUDA memory of a plain LoRA loop on `model` that, as diffusers' example scripts do, encodes the
    photo with the VAE and the caption with the text encoder(s) at every step (same rank, precision and resolution)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, DiffusionPipeline
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from storybook.identities import resolve_config
    from storybook.identities.families import Conditioning, pipeline_family
    from storybook.identities.lora import UNET_TARGETS
    from storybook.models import model_family, unet_parameter_count
    from storybook.sample_photos import write_sample_photos
    from storybook.training.latents import images_tensor

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    rank = resolve_config("lora", unet_parameter_count(model), family=model_family(model)).rank
    pipeline = DiffusionPipeline.from_pretrained(model, dtype=dtype).to(DEVICE)
    pipeline.vae.to(torch.float32)  # as storybook keeps an upcast VAE (and SDXL's must be)
    pipeline.unet.requires_grad_(False)
    pipeline.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS))
    cast_training_params(pipeline.unet, dtype=torch.float32)
    parameters = [p for p in pipeline.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=1e-2)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    resolution = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    photos = images_tensor(write_sample_photos(home / "plain-photos"), resolution)
    family = pipeline_family(pipeline)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize, stamps = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None), []
    for step in range(steps):
        photo = photos[step % len(photos) : step % len(photos) + 1].to(DEVICE)
        with torch.no_grad():
            latents = pipeline.vae.encode(photo).latent_dist.sample() * pipeline.vae.config.scaling_factor
            caption = family.encode(pipeline, ["a photo of zorv toddler"])
            sizes = family.size_inputs(torch.tensor([resolution]), resolution, caption.embeddings)  # SDXL's time ids
            conditioning = Conditioning(caption.embeddings, caption.added | sizes)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (1,), device=DEVICE)
        with torch.autocast(DEVICE, dtype=dtype):
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = pipeline.unet(noisy, timesteps, **conditioning.unet_inputs()).sample
        F.mse_loss(prediction.float(), noise.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        stamps.append(time.perf_counter())
    intervals = [later - earlier for earlier, later in pairwise(stamps)][WARMUP_STEPS - 1 :]
    peak = torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0
    return {"s_per_step": statistics.median(intervals), "peak_bytes": peak}


def run_model(spec: dict) -> dict:
    """Every training configuration of one model in this process, one after another (memory freed between them)."""
    import torch

    home, model, steps = Path(spec["home"]), spec["model"], spec["train_steps"]
    home.mkdir(parents=True, exist_ok=True)
    results = {}
    for precision in PRECISIONS:
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        for checkpointing in (False, True):
            key = f"{precision} {'on' if checkpointing else 'off'}"
            print(f"  storybook {key} ...", file=sys.stderr, flush=True)
            results[key] = measured(storybook_training, home, model, precision, checkpointing, steps)
        print(f"  plain loop {precision} ...", file=sys.stderr, flush=True)
        results[f"{precision} plain"] = measured(plain_training, home, model, precision, steps)
    return results


def dreambooth_step(spec: dict) -> dict:
    """A full DreamBooth run's s/step, peak memory and the plan's estimate on `spec`'s model (bf16, checkpointing,
    torch's AdamW, batch 1, no class images): the weights, gradients and optimiser state of the whole UNet."""
    home = Path(spec["home"])
    home.mkdir(parents=True, exist_ok=True)
    return storybook_training(home, spec["model"], "bf16", True, spec["train_steps"], method="dreambooth")


def masked_page(spec: dict) -> dict:
    """Seconds, peak memory and the plan's estimate of drawing one page with two image-prompt characters, each in its
    region, on `spec`'s model: a random IP-Adapter of h94's layout (its projection from a small random CLIP image
    encoder's 1024-wide embeddings, to_k_ip/to_v_ip copied from the model) built first, then the page drawn twice,
    the second measured."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from storybook.book import RenderSettings
    from storybook.config import AdapterSource
    from storybook.identities.adapter_format import new_adapter_weights, save_adapter_weights
    from storybook.registry import add_character
    from storybook.render.renderer import ImageJob, Renderer
    from storybook.sample_photos import write_sample_photos
    from storybook.tiny_model import build_tokenizer
    from storybook.training.personalize import build_identity
    from storybook.training.vram import model_shape, render_need

    home, model, steps = Path(spec["home"]), spec["model"], spec["render_steps"]
    adapter = home / "ip-adapter"
    encoder_config = CLIPVisionConfig(
        image_size=224, patch_size=14, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=1024,
    )  # fmt: skip
    CLIPVisionModelWithProjection(encoder_config).save_pretrained(adapter / "image_encoder")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", dtype=torch.float16)
    save_adapter_weights(adapter / "ip-adapter.safetensors", new_adapter_weights(unet, 1024, torch.Generator()))
    del unet
    source = AdapterSource(source=str(adapter), weight_name="ip-adapter.safetensors", image_encoder="image_encoder")
    photos = write_sample_photos(home / "photos")
    for name in ("Mia", "Rex"):
        add_character(home, name, photos, build_tokenizer())
        build_identity(home, name, "ip-adapter", model, adapter=source, image_scale=0.6)
    renderer = Renderer(home, model)
    renderer.load_identities(["mia", "rex"])
    job, settings = ImageJob("two children at the beach", "", 0, ("mia", "rex")), RenderSettings(steps=steps)
    renderer.draw([job], settings, steps)  # warm-up: kernels chosen, the masks made
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    renderer.draw([job], settings, steps)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    adapter_bytes = sum(tensor.numel() * 2 for tensor in load_file(adapter / "ip-adapter.safetensors").values())
    estimate = render_need(model_shape(model), 2).allocated + adapter_bytes  # the plan, and the adapter in fp16
    return {"s_per_page": seconds, "peak_bytes": torch.cuda.max_memory_allocated(), "estimate_bytes": estimate}


PARTS = {"--dreambooth-one": dreambooth_step, "--masked-one": masked_page}  # flag -> a part run in a subprocess


def measured(run, *arguments) -> dict:
    """`run(*arguments)`'s result, or {"error": ...} when it failed (one configuration running out of memory loses
    only its own row); GPU memory is freed afterwards either way."""
    import torch

    try:
        return run(*arguments)
    except Exception as error:  # out of memory, NaN, a bug: reported in the row, the next configuration runs
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"}
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def training_rows(label: str, pixels: int, results: dict) -> list[str]:
    """Markdown rows of one model's training results."""
    rows = []
    for precision in PRECISIONS:
        plain = results.get(f"{precision} plain")
        for checkpointing in ("off", "on"):
            result = results.get(f"{precision} {checkpointing}")
            if result is None:
                continue
            cells = [label, str(pixels), precision, checkpointing]
            if "error" in result:
                rows.append("| " + " | ".join([*cells, f"failed: {result['error']}", "", "", "", ""]) + " |")
                continue
            plain_ok = plain is not None and "error" not in plain
            ratio = f"{result['s_per_step'] / plain['s_per_step']:.2f}" if plain_ok and checkpointing == "off" else ""
            plain_cell = f"{plain['s_per_step']:.3f}" if plain_ok else (f"failed: {plain['error']}" if plain else "")
            peak, estimate = f"{result['peak_bytes'] / 2**30:.1f}", f"{result['estimate_bytes'] / 2**30:.1f}"
            cells += [f"{result['s_per_step']:.3f}", peak, estimate, plain_cell, ratio]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def plan_row(label: str, what: str, result: dict, seconds_key: str) -> str:
    """A markdown row of a part measured against the memory plan: seconds, peak, the plan's estimate, their ratio."""
    if "error" in result:
        return f"| {label} | {what} | failed: {result['error']} | | | |"
    peak, estimate = result["peak_bytes"], result["estimate_bytes"]
    cells = [label, what, f"{result[seconds_key]:.3f}", f"{peak / 2**30:.1f}", f"{estimate / 2**30:.1f}"]
    return "| " + " | ".join([*cells, f"{peak / estimate:.2f}"]) + " |"


def main() -> None:
    """Build both models, measure each part in a subprocess within the budget, write bench/RESULTS.md's `## GPU`
    section as it goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=10, help="LoRA steps per training configuration")
    parser.add_argument("--render-steps", type=int, default=10, help="denoising steps per picture")
    parser.add_argument("--budget", type=float, default=480, help="seconds the whole call may take")
    parser.add_argument("--one", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--render-one", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    for flag in PARTS:
        parser.add_argument(flag, metavar="SPEC_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    children = {"one": run_model, "render_one": render_run_one} | {
        flag.removeprefix("--").replace("-", "_"): part for flag, part in PARTS.items()
    }
    for name, run in children.items():
        if getattr(args, name):
            print(MARKER + json.dumps(run(json.loads(getattr(args, name)))), flush=True)
            return

    import torch

    if not torch.cuda.is_available():
        print("No CUDA GPU is present: bench/gpu.py measures GPU training and rendering only, so nothing was run.")
        return
    deadline = time.monotonic() + args.budget
    spent = f"skipped: the {args.budget:.0f}-second budget was spent"
    load_before = os.getloadavg()
    training, rendering, planned = [], [], []

    def within_budget(spec: dict, flag: str) -> dict:
        """`spec` run as part `flag` in a subprocess, stopped at the deadline; skipped when too little is left."""
        left = deadline - time.monotonic()
        if left < 30:
            return {"error": spent}
        return run_in_subprocess(spec, script=__file__, flag=flag, timeout=left)

    def write() -> None:
        section = "\n".join(
            [
                *section_header(SECTION, load_before),
                f"- Models: random weights in the public architectures, built on the GPU; LoRA at storybook's "
                f"defaults for the model (rank 8 SD 1.5, 4 SDXL), batch 1, {args.train_steps} steps, no prior "
                "preservation; s/step: median after a warm-up; peak: torch.cuda.max_memory_allocated; plan: the "
                "memory plan's estimate of that peak (storybook/training/vram.py, `MemoryNeed.allocated`)",
                "- Plain loop: the photo and caption encoded at every step (diffusers' example scripts); ratio: "
                "storybook s/step / plain s/step, same precision, without gradient checkpointing",
                "",
                "| model | px | precision | grad. checkpointing | s/step | peak GiB | plan GiB | plain loop s/step "
                "| ratio |",
                "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
                *training,
                "",
                f"The memory plan against the card ({args.render_steps} steps a page; s: per step or per page):",
                "",
                "| model | what | s | peak GiB | plan GiB | peak / plan |",
                "| --- | --- | ---: | ---: | ---: | ---: |",
                *planned,
                "",
                f"Rendering (bench/render.py's book: 13 pictures, two LoRA characters, {args.render_steps} steps, one "
                "render each way):",
                "",
                "| model | renderer | batch | s/page | peak GiB | overhead |",
                "| --- | --- | ---: | ---: | ---: | ---: |",
                *rendering,
            ]
        )
        print(section, flush=True)
        write_section(section)

    with tempfile.TemporaryDirectory(prefix="storybook-gpu-bench-") as temp:
        root = Path(temp)
        builders = [("sd15-shaped", 512, build_sd15_shaped), ("sdxl-shaped", 1024, build_sdxl_shaped)]
        for label, pixels, build in builders:
            if deadline - time.monotonic() < 60:
                planned.append(f"| {label} | everything | {spent} | | | |")
                write()
                continue
            print(f"building the {label} model on the GPU ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            with torch.device("cuda"):
                model = str(build(root / label))
            print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            spec = {"model": model, "train_steps": args.train_steps, "render_steps": args.render_steps}
            if label == "sdxl-shaped":  # the plan's parts first: they are what this run is for
                result = within_budget(spec | {"home": str(root / f"{label}-masked")}, "--masked-one")
                planned.append(plan_row(label, "masked two-character page", result, "s_per_page"))
            else:
                result = within_budget(spec | {"home": str(root / f"{label}-dreambooth")}, "--dreambooth-one")
                planned.append(plan_row(label, "DreamBooth step (bf16, checkpointing, AdamW)", result, "s_per_step"))
            write()
            print(f"training on {label} ...", file=sys.stderr, flush=True)
            result = within_budget(spec | {"home": str(root / f"{label}-train")}, "--one")
            failed = [f"| {label} | {pixels} | | | failed: {result['error']} | | | | |"] if "error" in result else []
            training += failed or training_rows(label, pixels, result)
            write()
            if deadline - time.monotonic() < 90:
                rendering.append(f"| {label} | | | {spent} | | |")
                write()
                continue
            print(f"rendering on {label} ...", file=sys.stderr, flush=True)
            home = root / f"{label}-render"
            home.mkdir()
            book = prepare_book(home, model, args.render_steps, train_steps=4)
            result = within_budget({"home": str(home), "book": str(book), "repeats": 1}, "--render-one")
            for way, batch in (("bare", 1), ("storybook batch 1", 1), ("storybook batch 4", 4)):
                renderer = "bare diffusers loop" if way == "bare" else "storybook render_book"
                if "error" in result:
                    rendering.append(f"| {label} | {renderer} | {batch} | failed: {result['error']} | | |")
                    continue
                seconds, bare = result["s_per_page"][way], result["s_per_page"]["bare"]
                cells = [label, renderer, str(batch), f"{seconds:.3f}", f"{result['peak_bytes'] / 2**30:.1f}"]
                rendering.append("| " + " | ".join([*cells, f"{seconds / bare:.2f}x"]) + " |")
            write()


if __name__ == "__main__":
    main()
