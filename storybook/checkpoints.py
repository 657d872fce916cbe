"""Training checkpoints: trainable weights, optimiser, RNG state and progress, written atomically, one kept.

Layout: <root>/step-NNNNNN/{trainable.safetensors, optimizer.pt, rng.pt, state.json}. A checkpoint is written in a
hidden folder and renamed into place, so a crash mid-write never leaves a half checkpoint that `--resume` would read.
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from storybook.errors import TrainingError


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    checkpoints = sorted(root.glob("step-*")) if root.is_dir() else []
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    root: Path,
    step: int,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    rng_state: torch.Tensor,
    state: dict,
) -> Path:
    """Write checkpoint step-NNNNNN (the trainable parameters of `models` by prefix, the optimiser, `rng_state` and
    the JSON-able `state`), then delete older checkpoints. Returns its folder."""
    target = root / f"step-{step:06d}"
    if target.exists():
        return target
    partial = root / f".partial-{step:06d}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    weights = {
        f"{prefix}.{name}": parameter.detach().cpu().contiguous()
        for prefix, model in models.items()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
    save_file(weights, partial / "trainable.safetensors")
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(rng_state, partial / "rng.pt")
    (partial / "state.json").write_text(json.dumps({**state, "step": step}))
    partial.rename(target)
    for older in root.glob("step-*"):
        if older != target:
            shutil.rmtree(older)
    return target


def load_checkpoint(
    checkpoint: Path, models: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict:
    """Restore `models`' trainable parameters, the optimiser and `generator` from `checkpoint`; return its state.

    Raises TrainingError when the saved weights do not fit the models.
    """
    weights = load_file(checkpoint / "trainable.safetensors")
    for prefix, model in models.items():
        named = {key[len(prefix) + 1 :]: value for key, value in weights.items() if key.startswith(f"{prefix}.")}
        unexpected = model.load_state_dict(named, strict=False).unexpected_keys
        if unexpected:
            raise TrainingError(f"{checkpoint} does not fit this model ({unexpected[0]}, ...); train without --resume.")
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    generator.set_state(torch.load(checkpoint / "rng.pt", weights_only=True))
    return json.loads((checkpoint / "state.json").read_text())
