"""bf16 on the CPU: is mixed precision worth allowing there? storybook-mini, fp32 against bf16, on this machine.

Times (1) a LoRA training step of storybook-mini's defaults (rank 8 on attention and convolutions, 4 photos and 4
class latents a batch) in fp32 and under bf16 autocast, and (2) drawing 4 pictures in 20 steps with the pipeline's
weights in fp32 and in bf16. Writes the `## bf16 on the CPU` section of bench/RESULTS.md.

Usage: python bench/cpu_bf16.py [--repeats 10]
"""

import argparse
import os
import statistics
import sys
import time

from train import section_header, write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark never reaches a model hub

SECTION = "## bf16 on the CPU"


def training_step_seconds(bf16: bool, repeats: int) -> float:
    """Median seconds of a storybook-mini LoRA step (forward, backward, AdamW) in fp32 or under bf16 autocast."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from storybook.identities.lora import UNET_CONV_TARGETS, UNET_TARGETS
    from storybook.models import MINI_MODEL_FOLDER

    unet = UNet2DConditionModel.from_pretrained(MINI_MODEL_FOLDER, subfolder="unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=UNET_TARGETS + UNET_CONV_TARGETS))
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=5e-4)
    size, width = unet.config.sample_size, unet.config.cross_attention_dim
    latents, words, timesteps = torch.randn(8, 4, size, size), torch.randn(8, 77, width), torch.randint(1000, (8,))
    seconds = []
    for _ in range(repeats + 1):  # the first is a warm-up
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prediction = unet(latents, timesteps, words).sample
        torch.nn.functional.mse_loss(prediction.float(), latents).backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def render_seconds(dtype_name: str) -> float:
    """Seconds to draw 4 pictures in 20 steps with storybook-mini's weights in `dtype_name` (after a warm-up)."""
    import torch
    from diffusers import DiffusionPipeline

    from storybook.models import MINI_MODEL_FOLDER

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    pipeline = DiffusionPipeline.from_pretrained(MINI_MODEL_FOLDER, dtype=dtype, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    pipeline("a toddler", num_inference_steps=2)
    started = time.perf_counter()
    generators = [torch.Generator().manual_seed(seed) for seed in range(4)]
    pipeline(["a toddler at the beach"] * 4, num_inference_steps=20, generator=generators)
    return time.perf_counter() - started


def main() -> None:
    """Measure both, print the table and write bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="training steps timed each way")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    print("timing training steps ...", file=sys.stderr)
    fp32, bf16 = training_step_seconds(False, args.repeats), training_step_seconds(True, args.repeats)
    rows.append(f"| LoRA training step (batch 8 latents) | {fp32:.3f} s | {bf16:.3f} s | {bf16 / fp32:.1f}x |")
    print("timing renders ...", file=sys.stderr)
    fp32, bf16 = render_seconds("fp32"), render_seconds("bf16")
    rows.append(f"| 4 pictures, 20 steps | {fp32:.2f} s | {bf16:.2f} s | {bf16 / fp32:.1f}x |")
    section = "\n".join(
        [
            *section_header(SECTION, load_before),
            "- Model: storybook-mini; bf16: autocast for training (fp32 master weights), bf16 weights for drawing",
            "",
            "| work | fp32 | bf16 | bf16 / fp32 |",
            "| --- | ---: | ---: | ---: |",
            *rows,
        ]
    )
    print(section)
    write_section(section)


if __name__ == "__main__":
    main()
