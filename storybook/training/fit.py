"""Fitting a training run to the card it runs on, before any weights load: the memory plan of the settings asked for
(training/vram.py) and, when it does not fit, the first of the policies that does, applied in the order kohya and
diffusers' scripts reach for them on small cards (gradient checkpointing, 8-bit AdamW, Adafactor fused into the
backward pass, bf16 weights), each only where the user did not set what it changes; or a refusal in one line naming
what would fit. Methods and families are parts: the policies and the refusal ask the plan, never the method's name.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from storybook.errors import TrainingError
from storybook.identities import METHODS, resolve_config
from storybook.identities.base import ModelShape
from storybook.identities.training_config import Method, TrainingConfig, checked_config
from storybook.training.vram import FAMILY_NAMES, GIB, MemoryNeed, gib, training_need

CARD_SIZES_GIB = (8, 12, 16, 24, 32, 40, 48, 80)  # common cards, for "a card of N GiB" in a refusal
FALLBACK_METHODS: tuple[Method, ...] = ("lora", "textual-inversion", "hypernetwork", "pivotal", "dreambooth")


@dataclass(frozen=True)
class Card:
    """The GPU a run plans for: its memory and what it can run."""

    memory: int  # bytes
    bf16: bool = True  # computes bf16 natively (Ampere and later)
    bitsandbytes: bool = False  # bitsandbytes is installed (8-bit AdamW)

    @property
    def label(self) -> str:
        """E.g. 'this 12.0 GiB card'."""
        return f"this {gib(self.memory)} card"


@dataclass(frozen=True)
class Policy:
    """A memory-saving change of settings, and when it can apply."""

    name: str  # as the switch is announced
    changes: dict
    applies: Callable[[TrainingConfig, Card], bool]


POLICIES = (
    Policy("gradient checkpointing", {"gradient_checkpointing": True}, lambda config, card: True),
    Policy(
        "8-bit AdamW",
        {"optimizer": "adamw-8bit"},
        lambda config, card: card.bitsandbytes and config.optimizer == "adamw",
    ),
    Policy(
        "Adafactor fused into the backward pass",
        {"optimizer": "adafactor", "fused_backward": True},
        lambda config, card: (
            METHODS[config.method].whole_model and config.grad_accum == 1 and config.mixed_precision != "fp16"
        ),
    ),
    Policy(
        "bf16 weights",
        {"full_bf16": True, "mixed_precision": "bf16"},
        lambda config, card: card.bf16 and config.fused_backward,
    ),
)


@dataclass(frozen=True)
class Fitted:
    """A run's settings as fitted to its card: what changed (announced), and what it is expected to need."""

    config: TrainingConfig
    need: MemoryNeed
    switches: list[str] = field(default_factory=list)  # the policies applied, by name


def fit_to_card(
    shape: ModelShape,
    config: TrainingConfig,
    card: Card,
    fixed: frozenset[str] = frozenset(),
    resolution: int | None = None,
    sample_grids: bool = True,
) -> Fitted:
    """`config` as it can run on `card`: unchanged when its plan fits, else with the first policies that make it
    fit, never changing a setting in `fixed` (those the user gave, or a resumed run's).

    Raises TrainingError in one line when nothing fits: what the run needs at best, and what would fit (another
    method on this card, or the smallest card for this one).
    """
    fitted = best_fit(shape, config, card, fixed, resolution, sample_grids)
    if fitted.need.on_card <= card.memory:
        return fitted
    raise TrainingError(refusal(shape, fitted, card, fixed, resolution, sample_grids))


def best_fit(
    shape: ModelShape,
    config: TrainingConfig,
    card: Card,
    fixed: frozenset[str],
    resolution: int | None,
    sample_grids: bool,
) -> Fitted:
    """`config` with the first policies (in order, cumulative) that make it fit `card`, or with every policy that
    applies when none does (the least it can need)."""
    need = training_need(shape, config, resolution, sample_grids)
    switches, current = [], config
    for policy in POLICIES:
        if need.on_card <= card.memory:
            break
        if fixed & policy.changes.keys() or not policy.applies(current, card):
            continue
        candidate = checked_config(current.model_dump() | policy.changes)
        if candidate == current:
            continue
        current, need = candidate, training_need(shape, candidate, resolution, sample_grids)
        switches.append(policy.name)
    return Fitted(current, need, switches)


def refusal(
    shape: ModelShape,
    best: Fitted,
    card: Card,
    fixed: frozenset[str],
    resolution: int | None,
    sample_grids: bool,
) -> str:
    """The one line that refuses a run whose least need (`best`) is more than `card` has, naming what would fit."""
    config, need = best.config, best.need
    tried = f" even with {', '.join(best.switches)}" if best.switches else ""
    kept = f" (as set: {', '.join(sorted(fixed))})" if fixed else ""
    if fixed >= TrainingConfig.model_fields.keys():
        kept = " (a resumed run keeps the settings it started with)"
    bigger = next((size for size in CARD_SIZES_GIB if size * GIB >= need.on_card), None)
    elsewhere = f"a card of {bigger} GiB" if bigger else "a larger card"
    return (
        f"{config.method} on {FAMILY_NAMES[shape.family]} needs about {gib(need.on_card)} of GPU memory{tried}"
        f"{kept}, more than {card.label}: {what_fits(shape, config.method, card, resolution, sample_grids)}, or "
        f"use {elsewhere}."
    )


def what_fits(shape: ModelShape, method: Method, card: Card, resolution: int | None, sample_grids: bool) -> str:
    """The first other method whose default settings fit `card` on this model (with its policies), as a
    suggestion."""
    for other in FALLBACK_METHODS:
        if other == method or shape.family not in METHODS[other].families:
            continue
        fitted = best_fit(shape, default_settings(other, shape, card), card, frozenset(), resolution, sample_grids)
        if fitted.need.on_card <= card.memory:
            return f"train --method {other} instead (about {gib(fitted.need.on_card)})"
    return f"no method fits {FAMILY_NAMES[shape.family]} on {card.label}"


def default_settings(method: Method, shape: ModelShape, card: Card) -> TrainingConfig:
    """`method`'s default settings for a model of `shape` on `card` (its mixed precision and optimiser defaults)."""
    on_card = {
        "mixed_precision": "bf16" if card.bf16 else "fp16",
        "optimizer": "adamw-8bit" if card.bitsandbytes else "adamw",
    }
    return resolve_config(method, shape.unet, on_card, shape.family)
