"""Training checkpoints: trainable weights, optimiser, RNG state and progress, written atomically, one kept.

Layout: <root>/step-NNNNNN/{trainable.safetensors, optimizer.pt, rng.pt, state.json}, plus scaler.pt under fp16.
A checkpoint is written in a hidden folder and renamed into place, so a crash mid-write never leaves a half
checkpoint that `--resume` would read.
"""

import json
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from storybook.errors import TrainingError
from storybook.storage import build_folder
from storybook.weights import first_nonfinite, unreadable


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    checkpoints = sorted(root.glob("step-*")) if root.is_dir() else []
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    root: Path,
    step: int,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    rng_state: torch.Tensor,
    state: dict,
) -> Path:
    """Write checkpoint step-NNNNNN (the trainable parameters of `models` by prefix, the optimiser, the fp16 loss
    `scaler`, `rng_state` and the JSON-able `state`), then delete older checkpoints. Returns its folder."""
    target = root / f"step-{step:06d}"
    if target.exists():
        return target
    try:
        with build_folder(target, replace=False) as partial:
            weights = {
                f"{prefix}.{name}": parameter.detach().cpu().contiguous()
                for prefix, model in models.items()
                for name, parameter in model.named_parameters()
                if parameter.requires_grad
            }
            save_file(weights, partial / "trainable.safetensors")
            torch.save(optimizer.state_dict(), partial / "optimizer.pt")
            torch.save(rng_state, partial / "rng.pt")
            if scaler is not None:
                torch.save(scaler.state_dict(), partial / "scaler.pt")
            (partial / "state.json").write_text(json.dumps({**state, "step": step}))
    except (OSError, SafetensorError) as error:  # the half-written folder is gone; safetensors has its own disk error
        kept = latest_checkpoint(root)
        raise TrainingError(
            f"Could not save the checkpoint of step {step} ({getattr(error, 'strerror', None) or error}); "
            + (f"the last one ({kept.name}) is kept. " if kept else "")
            + "Free some disk space, then train again with --resume (or --restart)."
        ) from None
    for older in root.glob("step-*"):
        if older != target:
            shutil.rmtree(older)
    return target


def load_checkpoint(
    checkpoint: Path,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator,
) -> None:
    """Restore `models`' trainable parameters, the optimiser, `scaler` and `generator` from `checkpoint`.

    Raises TrainingError when the files are damaged (cut off, NaN or infinite weights, more than plain data) or the
    saved weights are not exactly the models' trainable ones.
    """
    try:
        weights = load_file(checkpoint / "trainable.safetensors")
    except (OSError, SafetensorError):
        raise TrainingError(
            f"{checkpoint} is damaged ({unreadable(checkpoint / 'trainable.safetensors')}); start over with --restart."
        ) from None
    if bad := first_nonfinite(weights.items()):
        raise TrainingError(f"{checkpoint} is damaged (NaN or infinite weights in {bad}); start over with --restart.")
    trained = {
        f"{prefix}.{name}"
        for prefix, model in models.items()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    does_not_fit = (
        f"{checkpoint} does not fit this run (it holds other weights than it trains); start over with --restart."
    )
    if weights.keys() != trained:
        raise TrainingError(does_not_fit)
    try:
        for prefix, model in models.items():
            model.load_state_dict(
                {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(f"{prefix}.")}, strict=False
            )
    except RuntimeError:  # weights of other shapes
        raise TrainingError(does_not_fit) from None
    try:
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        if scaler is not None and (checkpoint / "scaler.pt").exists():
            scaler.load_state_dict(torch.load(checkpoint / "scaler.pt", weights_only=True))
        generator.set_state(torch.load(checkpoint / "rng.pt", weights_only=True))
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError):
        # torch's own words for a file with more than plain data advise loading it unsafely: never shown
        raise TrainingError(
            f"{checkpoint} is damaged (its optimiser or random state cannot be read, or does not fit this run); start "
            "over with --restart."
        ) from None


def read_state(checkpoint: Path) -> dict:
    """The JSON state saved with `checkpoint` (step, settings, history). Raises TrainingError when it is damaged or
    lacks the step."""
    try:
        state = json.loads((checkpoint / "state.json").read_text())
    except (OSError, ValueError) as error:
        raise TrainingError(f"{checkpoint} is damaged ({error}); start over with --restart.") from error
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise TrainingError(
            f"{checkpoint} is damaged (its state.json lacks the run's progress); start over with --restart."
        )
    return state
