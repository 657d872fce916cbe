"""Training benchmark: seconds per step, peak memory and artifact size of identity training.

Measures method {lora, dreambooth} x latent cache {on, off} on the tiny model and, when CUDA is available, on an
SD-1.5-shaped model with random weights (built here from the public configs; nothing is downloaded). Each
configuration runs in its own subprocess with a fresh data root, so peak RSS on the CPU belongs to that run alone.
Prints a markdown table and writes it to bench/RESULTS.md as the `## Training` section.

Usage: python bench/train.py [--steps 20]
"""

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark never reaches a model hub

RESULTS = Path(__file__).with_name("RESULTS.md")
WARMUP_STEPS = 2  # step intervals dropped before taking the median
MARKER = "BENCH_RESULT "  # prefix of the child's result line on stdout
SECTION = "## Training"
COLUMNS = "model|method|latent cache|s/step|peak memory MiB|artifact MiB|wall s|photo loss before → after".split("|")


def sd15_unet():
    """A UNet with SD 1.5's architecture (860 M parameters) and random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )


def sd_shaped_vae(sample_size: int, scaling_factor: float):
    """A VAE with Stable Diffusion's architecture (SD 1.5's and SDXL's are the same) and random weights; it asks to
    be upcast to fp32, as theirs do."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        force_upcast=True,
    )


def sd15_text_config(tokenizer):
    """The config of SD 1.5's text encoder (CLIP ViT-L/14's, 123 M parameters), with `tokenizer`'s special ids."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_sd15_shaped(folder: Path) -> Path:
    """Save a pipeline with SD 1.5's architecture and random weights to `folder`; return the folder."""
    import torch
    from diffusers import PNDMScheduler
    from transformers import CLIPTextModel

    from storybook.tiny_model import assemble_pipeline, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    unet = sd15_unet()
    vae = sd_shaped_vae(512, 0.18215)
    text_config = sd15_text_config(tokenizer)
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipeline = assemble_pipeline(vae, CLIPTextModel(text_config), tokenizer, unet, scheduler)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def run_one(spec: dict) -> dict:
    """Train one configuration in this process (a fresh data root) and return its measurements."""
    import torch

    from storybook.memory import peak_memory_bytes
    from storybook.registry import add_character, character_dir
    from storybook.sample_photos import write_sample_photos
    from storybook.tiny_model import build_tokenizer
    from storybook.training.loop import StepReport, train_identity

    home = Path(spec["home"])
    home.mkdir(parents=True)
    character = add_character(home, "Mia", write_sample_photos(home / "photos"), build_tokenizer())
    cuda = torch.cuda.is_available()
    stamps: list[float] = []

    def on_step(report: StepReport) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    metadata = train_identity(
        home, "Mia", spec["method"], spec["model"], spec["overrides"], show_progress=False, on_step=on_step
    )
    wall = time.perf_counter() - started
    intervals = [later - earlier for earlier, later in pairwise(stamps)][WARMUP_STEPS - 1 :]
    identity = character_dir(home, character.slug) / "identity"
    return {
        "s_per_step": statistics.median(intervals),
        "peak_bytes": peak_memory_bytes(),
        "artifact_bytes": sum(f.stat().st_size for f in identity.rglob("*") if f.is_file()),
        "wall_s": wall,
        "photo_loss_before": metadata.photo_loss_before,
        "photo_loss_after": metadata.photo_loss_after,
    }


def run_in_subprocess(spec: dict, script: str = __file__, flag: str = "--one", timeout: float | None = None) -> dict:
    """Run `spec` via `script --one` (or another `flag`) in a child process, stopped after `timeout` seconds; return
    its result, or {"error": ...} when it failed or was stopped."""
    try:
        command = [sys.executable, script, flag, json.dumps(spec)]
        child = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout:.0f} s (the time budget)"}
    lines = [line for line in child.stdout.splitlines() if line.startswith(MARKER)]
    if child.returncode != 0 or not lines:
        sys.stderr.write(child.stderr[-4000:])
        last = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        return {"error": last}
    return json.loads(lines[-1][len(MARKER) :])


def table_row(spec: dict, result: dict) -> str:
    """One markdown table row for a configuration and its measurements."""
    cells = [spec["label"], spec["method"], "on" if spec["overrides"]["cache_latents"] else "off"]
    if "error" in result:
        return "| " + " | ".join(cells + [f"failed: {result['error']}"] + [""] * 4) + " |"
    before, after = result["photo_loss_before"], result["photo_loss_after"]
    mib = 2**20
    cells += [
        f"{result['s_per_step']:.3f}",
        f"{result['peak_bytes'] / mib:.0f}",
        f"{result['artifact_bytes'] / mib:.2f}",
        f"{result['wall_s']:.1f}",
        f"{before:.4f} → {after:.4f}" if before is not None and after is not None else "n/a",
    ]
    return "| " + " | ".join(cells) + " |"


def machine_description(load: tuple[float, float, float]) -> str:
    """CPU model, core count, torch version and GPU (if any) of this machine, and its `load` average."""
    import torch

    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    loads = " / ".join(f"{value:.1f}" for value in load)
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, GPU: {gpu}; load average before: {loads}"


def section_header(heading: str, load: tuple[float, float, float]) -> list[str]:
    """The first lines of a RESULTS.md section: its heading, then when, where (`load`: load average before) and how."""
    return [
        heading,
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine_description(load)}",
        f"- Command: `{shlex.join(['python', *sys.argv])}`",
    ]


def write_section(section: str, path: Path = RESULTS) -> None:
    """Put `section` into `path`, replacing only the old section of the same heading (up to the next `## `)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    heading = section.splitlines()[0]
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section.rstrip("\n").splitlines() + ([""] if end < len(lines) else [])
    else:
        lines += ["", *section.rstrip("\n").splitlines()]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def main() -> None:
    """Run every configuration in a subprocess, print the table and write bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per configuration (at least 4)")
    parser.add_argument("--one", metavar="SPEC_JSON", help=argparse.SUPPRESS)  # internal: run one configuration
    args = parser.parse_args()
    if args.one:
        print(MARKER + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    if args.steps < WARMUP_STEPS + 2:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 2}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the child, remove the temporary folder
    load_before = os.getloadavg()  # 1, 5, 15 min: other work on the machine skews CPU timings
    import torch

    from storybook.memory import peak_memory_kind

    cuda = torch.cuda.is_available()
    base = {"steps": args.steps, "num_class_images": 4, "class_image_steps": 4, "checkpoint_every": args.steps + 1}
    gpu_settings = {"lora": {"mixed_precision": "fp16"}, "dreambooth": {"gradient_checkpointing": True}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="storybook-bench-") as temp:
        root = Path(temp)
        models = [("tiny", "tiny")]
        if cuda:
            print("building the SD-1.5-shaped model ...", file=sys.stderr)
            models.append(("sd15-shaped (random)", str(build_sd15_shaped(root / "sd15"))))
        for label, model in models:
            for method in ("lora", "dreambooth"):
                for cache in (True, False):
                    overrides = {**base, "cache_latents": cache, **(gpu_settings[method] if cuda else {})}
                    spec = {"label": label, "model": model, "method": method, "overrides": overrides}
                    spec |= {"home": str(root / f"run-{len(rows)}")}
                    print(f"training {label} / {method} / cache {'on' if cache else 'off'} ...", file=sys.stderr)
                    rows.append(table_row(spec, run_in_subprocess(spec)))

    memory = f"{peak_memory_kind()} of the training subprocess"
    section = "\n".join(
        [
            *section_header(SECTION, load_before),
            f"- Settings: {json.dumps(base)}; GPU only: {json.dumps(gpu_settings) if cuda else 'n/a (CPU run)'}",
            f"- s/step: median of step intervals after {WARMUP_STEPS} warm-up steps; peak memory: {memory}; "
            "wall s: the whole `train_identity` call (class images, samples and saving included)",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
            *rows,
        ]
    )
    print(section)
    write_section(section)
    if any("failed:" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
