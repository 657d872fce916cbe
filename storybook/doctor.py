"""`storybook doctor`: what this machine's GPU can do, by model family and method, before anything runs: each method at
its defaults fits as it is, fits with a memory policy (named), or is refused; and drawing a page, one and four at a
time. From the memory plan (training/vram.py, training/fit.py) and parameter counts alone: nothing loads.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from storybook.config import configured_model, load_config
from storybook.errors import StorybookError, TrainingError
from storybook.identities import METHODS
from storybook.identities.base import ModelShape
from storybook.identities.training_config import TrainingConfig
from storybook.models import TINY_MODEL, check_model_on_disk, pick_device
from storybook.training.fit import FALLBACK_METHODS, Card, default_settings, fit_to_card
from storybook.training.plan import bf16_in_hardware
from storybook.training.vram import FAMILY_NAMES, GIB, SD15_SHAPE, SDXL_SHAPE, gib, model_shape, render_need

DRAWING_BYTES = 2  # pages are drawn in fp16 on a GPU (`pick_dtype`)


@dataclass(frozen=True)
class Verdict:
    """What one method (or drawing) can do on the card."""

    model: str  # e.g. 'SDXL (reference)'
    what: str  # a method, or 'draw 1 page' / 'draw 4 pages'
    fits: bool | None  # None: the method does not train this family
    need: int  # bytes on the card (0 when it does not apply)
    how: str  # the settings it runs with, the policies applied, or why not


def this_card(home: Path, gpu_memory: float | None = None) -> tuple[Card | None, str]:
    """The card to plan for and a line describing it: `gpu_memory` GiB when given, else the data root's
    `gpu_memory` setting, else the CUDA card's own memory; (None, why) when there is no card to plan for."""
    setting = gpu_memory or load_config(home).gpu_memory
    bitsandbytes = importlib.util.find_spec("bitsandbytes") is not None
    extras = "bitsandbytes installed" if bitsandbytes else "no bitsandbytes (no 8-bit AdamW)"
    device = pick_device(load_config(home).device)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device.index or 0)
        bf16 = bf16_in_hardware()
        memory = int(setting * GIB) if setting else properties.total_memory
        planned = f", planned as {gib(memory)} (the gpu-memory setting)" if setting else ""
        line = f"{properties.name}, {gib(properties.total_memory)}{planned}, {'bf16' if bf16 else 'fp16 only'}"
        return Card(memory, bf16, bitsandbytes), f"{line}; {extras}"
    if setting:
        line = f"no CUDA GPU here ({device.type}): planning for a {gib(int(setting * GIB))} card with bf16"
        return Card(int(setting * GIB), True, bitsandbytes), f"{line}; {extras}"
    return None, (
        f"no CUDA GPU here ({device.type}): training runs in fp32 without a memory plan; give --gpu-memory GIB to see "
        "what a card of that size would do"
    )


def settings_line(config: TrainingConfig) -> str:
    """The memory-relevant settings of `config`, e.g. 'bf16, checkpointing, adamw-8bit, batch 1'."""
    parts = [config.mixed_precision if config.mixed_precision != "no" else "fp32"]
    parts += ["checkpointing"] if config.gradient_checkpointing else []
    parts += [config.optimizer] + (["fused backward"] if config.fused_backward else [])
    parts += ["bf16 weights"] if config.full_bf16 else []
    parts += [f"batch {config.batch_size}" + (" + class images" if config.prior_preservation else "")]
    return ", ".join(parts)


def verdicts(card: Card, label: str, shape: ModelShape) -> list[Verdict]:
    """Each method at its defaults on `card`, then drawing one and four pages, for a model of `shape`."""
    rows = []
    for method in FALLBACK_METHODS:
        if shape.family not in METHODS[method].families:
            rows.append(Verdict(label, method, None, 0, f"trains on {FAMILY_NAMES['sd']} only"))
            continue
        config = default_settings(method, shape, card)
        try:
            fitted = fit_to_card(shape, config, card)
        except TrainingError as error:
            rows.append(Verdict(label, method, False, 0, str(error)))
            continue
        switched = f"switches to {', '.join(fitted.switches)}: " if fitted.switches else ""
        rows.append(Verdict(label, method, True, fitted.need.on_card, switched + settings_line(fitted.config)))
    for batch in (1, 4):
        need = render_need(shape, DRAWING_BYTES, batch=batch).on_card
        what = f"draw {batch} page{'s' if batch > 1 else ''}"
        rows.append(Verdict(label, what, need <= card.memory, need, f"fp16, {shape.native_size} px"))
    return rows


def doctor_report(home: Path, gpu_memory: float | None = None) -> tuple[str, list[Verdict]]:
    """The card line and the verdicts for the public SD 1.5 and SDXL shapes and the data root's own model (when its
    configs are on this machine and it is neither); no verdicts without a card to plan for."""
    card, line = this_card(home, gpu_memory)
    if card is None:
        return line, []
    shapes = {"SD 1.5 (public shape)": SD15_SHAPE, "SDXL base (public shape)": SDXL_SHAPE}
    model = configured_model(home)
    try:  # the tiny model is counted only once built: the doctor builds nothing
        built = model != TINY_MODEL or (home / "models" / TINY_MODEL / "model_index.json").is_file()
        own = model_shape(check_model_on_disk(model, home)) if built else None
    except (StorybookError, OSError):
        own = None
    if own is not None and own not in shapes.values():
        shapes[model] = own
    return line, [row for label, shape in shapes.items() for row in verdicts(card, label, shape)]
