"""Weights as storybook reads them: a file that cannot be read is named as damaged (not as a bug, nor as a download
that is missing), and weights holding NaN or an infinity are refused when they load. Such weights raise no error
anywhere else: they draw black pictures and write empty captions (the pictures are checked too, see
storybook/render/renderer.py).
"""

import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from storybook.errors import ModelError

Named = Iterable[tuple[str, torch.Tensor]]  # (name, tensor) pairs: a module's named_parameters(), a file's tensors


def tensors_in(value: object, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in `value` (a tensor, or dicts, lists and tuples of them, as torch.save writes them) with a name
    saying where it is ('768.0.linear.0.weight')."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_in(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from tensors_in(item, f"{name}.{index}" if name else str(index))


def file_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the weights file at `path` (safetensors; any other file is read as torch.save's plain weights,
    never as code), or of every safetensors file in the folder at `path`. Raises ModelError naming a file that
    cannot be read."""
    for file in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]:
        try:
            if file.suffix == ".safetensors":
                with safe_open(file, framework="pt") as weights:
                    for key in weights.keys():  # noqa: SIM118  (a safetensors file, not a dict)
                        yield f"{file.name}: {key}", weights.get_tensor(key)
            else:
                yield from tensors_in(torch.load(file, map_location="cpu", weights_only=True), f"{file.name}:")
        except (OSError, SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
            raise ModelError(unreadable(file)) from None


def unreadable(file: Path) -> str:
    """What to say of a weights file that cannot be read (never the library's own words: torch's suggest loading an
    unsafe file unsafely)."""
    return f"{file} cannot be read: it is cut off or damaged, or it holds more than plain weights"


def damaged_file(path: Path) -> str | None:
    """`unreadable`'s words for the first safetensors file at `path` (a file, or a folder searched through) whose
    header does not open (a file cut off by a broken download or a full disk), or None. Only headers are read."""
    for file in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]:
        try:
            with safe_open(file, framework="pt"):
                pass
        except (OSError, SafetensorError):
            return unreadable(file)
    return None


def first_nonfinite(tensors: Named) -> str | None:
    """The name of the first floating-point tensor of `tensors` holding NaN or an infinity, or None."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def check_finite(tensors: Named, what: str, remedy: str) -> None:
    """Raises ModelError saying that `what` is damaged, and `remedy`, when a floating-point tensor of `tensors` holds
    NaN or an infinity (its pictures would be black, its captions empty), or a file of `file_tensors` cannot be
    read."""
    try:
        bad = first_nonfinite(tensors)
    except ModelError as error:  # from `file_tensors`: a file that cannot be read
        raise ModelError(f"{what} is damaged: {error}. {remedy}") from None
    if bad:
        raise ModelError(f"{what} is damaged: its weights hold NaN or infinite values ({bad}). {remedy}")
