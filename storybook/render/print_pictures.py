"""Pictures for print: cropped to the shape they are placed in and enlarged to at least 300 DPI at that size.

Enlarging uses diffusers' x4 upscaler when its weights are on this machine (and, with 'auto', a GPU to run it), and
high-quality Lanczos resampling otherwise. The upscaler is loaded once per process and enlarges a picture in
overlapping 128-pixel tiles (the size it was trained on), blended where they overlap: a whole 512 or 1024-pixel
picture would have its VAE decode 2048 or 4096 pixels at once, a known out-of-memory case. Results are JPEG files
cached under <book>/print/, named after the picture, the pixel size and the method, so exporting again with the same
geometry (another layout's pages aside) reuses them.
"""

import gc
import hashlib
import io
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps

from storybook.book import book_file
from storybook.config import X4_UPSCALER
from storybook.errors import ModelError
from storybook.storage import atomic_write_bytes

if TYPE_CHECKING:
    from diffusers import StableDiffusionUpscalePipeline

PRINT_DPI = 300
PRINT_DIR = "print"
UPSCALER_CLASS = "StableDiffusionUpscalePipeline"
X4_STEPS = 20
X4_TILE = 128  # input pixels per side of a tile (512 enlarged)
X4_OVERLAP = 16  # input pixels neighbouring tiles share, blended
X4_BATCH = 4  # tiles per upscaler call
Upscaler = Literal["auto", "x4", "lanczos"]
LOADED_UPSCALERS: dict[tuple[str, str], "StableDiffusionUpscalePipeline"] = {}  # (model, device) -> pipeline
UPSCALING = threading.Lock()  # one upscaler call at a time: the app's sessions share the pipeline and its scheduler


def load_x4_upscaler(model: str, device: str | None = None) -> "StableDiffusionUpscalePipeline | None":
    """diffusers' x4 upscaler from a local folder or the Hugging Face cache (never downloaded), loaded once per process
    and device; None when absent. Raises ModelError when its files are here but damaged (cannot be read, or NaN or
    infinite weights: its pictures would be black)."""
    # Lazy for import speed (torch and diffusers load only once a book is exported), not to hide a circle.
    from diffusers import StableDiffusionUpscalePipeline

    from storybook.models import local_snapshot, pick_device, pick_dtype
    from storybook.weights import check_finite, damaged_file

    torch_device = pick_device(device)
    key = (model, str(torch_device))
    again = f"Download it again (`hf download {model}`), or use --upscaler lanczos."
    if key not in LOADED_UPSCALERS:
        folder = local_snapshot(model)
        if folder is not None and (damage := damaged_file(folder)):
            raise ModelError(f"The x4 upscaler {model} is damaged: {damage}. {again}")
        try:
            upscaler = StableDiffusionUpscalePipeline.from_pretrained(
                model, dtype=pick_dtype(torch_device), local_files_only=True
            )
        except (OSError, ValueError):
            return None
        for part in ("unet", "vae", "text_encoder"):
            check_finite(getattr(upscaler, part).named_parameters(), f"The x4 upscaler {model}", again)
        upscaler.set_progress_bar_config(disable=True)
        LOADED_UPSCALERS[key] = upscaler.to(torch_device)
    return LOADED_UPSCALERS[key]


def release_upscalers() -> None:
    """Drop the upscalers loaded in this process, their GPU memory returned (before another job needs the card)."""
    import torch

    with UPSCALING:
        LOADED_UPSCALERS.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` pixels start to cover `length` pixels, neighbours sharing at least `overlap` (the last
    one flush with the end); one tile when it fits."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def blend_ramp(size: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Weights along one side of an enlarged tile: rising linearly over the `overlap` pixels it shares with the tile
    before it and falling over those it shares with the one after it (none at the picture's edges), 1 elsewhere."""
    ramp = np.ones(size, np.float32)
    fade = np.linspace(0, 1, overlap + 2, dtype=np.float32)[1:-1]  # never 0: every pixel keeps some weight
    if not first:
        ramp[:overlap] = fade
    if not last:
        ramp[size - overlap :] = fade[::-1]
    return ramp


def upscale_tiled(
    upscale: Callable[[list[Image.Image]], list[Image.Image]],
    picture: Image.Image,
    scale: int = 4,
    tile: int = X4_TILE,
    overlap: int = X4_OVERLAP,
    batch: int = X4_BATCH,
) -> Image.Image:
    """`picture` enlarged `scale` times by `upscale` in overlapping tiles of `tile` pixels (`batch` per call), blended
    linearly where they overlap, so the memory used is that of a few tiles however large the picture."""
    width, height = picture.size
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    boxes = [(x, y, min(x + tile, width), min(y + tile, height)) for y in ys for x in xs]
    total = np.zeros((height * scale, width * scale, 3), np.float32)
    weights = np.zeros((height * scale, width * scale, 1), np.float32)
    for start in range(0, len(boxes), batch):
        chunk = boxes[start : start + batch]
        for (x, y, right, bottom), enlarged in zip(chunk, upscale([picture.crop(box) for box in chunk]), strict=True):
            size = ((right - x) * scale, (bottom - y) * scale)  # an upscaler may round an odd size down: back to it
            pixels = np.asarray(enlarged.convert("RGB").resize(size, Image.Resampling.LANCZOS), np.float32)
            rows = blend_ramp(pixels.shape[0], overlap * scale, y == ys[0], bottom == height)
            columns = blend_ramp(pixels.shape[1], overlap * scale, x == xs[0], right == width)
            weight = rows[:, None, None] * columns[None, :, None]
            total[y * scale : bottom * scale, x * scale : right * scale] += pixels * weight
            weights[y * scale : bottom * scale, x * scale : right * scale] += weight
    return Image.fromarray(np.clip(np.rint(total / weights), 0, 255).astype(np.uint8))


class PrintPictures:
    """Makes the print files of a book's pictures, with the upscaler chosen once per export."""

    def __init__(
        self,
        folder: Path,
        upscaler: Upscaler = "auto",
        upscaler_model: str = X4_UPSCALER,
        device: str | None = None,
        tiles: tuple[int, int] = (X4_TILE, X4_OVERLAP),
    ):
        """Choose the method: 'x4' needs the upscaler's weights (ModelError otherwise); 'auto' uses them on a GPU.
        `tiles`: the upscaler's tile and overlap, in input pixels."""
        from storybook.models import pick_device  # torch: only once a book is exported

        book_file(folder, PRINT_DIR)  # print files are written there: a symlink out of the book is refused
        self.folder = folder
        self.x4 = None
        if upscaler == "x4" or (upscaler == "auto" and pick_device(device).type == "cuda"):
            self.x4 = load_x4_upscaler(upscaler_model, device)
            if self.x4 is None and upscaler == "x4":
                raise ModelError(
                    f"The x4 upscaler {upscaler_model!r} is not on this machine. Download it where there is network "
                    f"(`hf download {upscaler_model}`), give its folder with --upscaler-model or `storybook config "
                    "--upscaler`, or use --upscaler lanczos."
                )
        model_tag = hashlib.sha256(upscaler_model.encode()).hexdigest()[:8]
        self.tiles = tiles
        # Names the print files: another model (or the earlier untiled upscaling) made other files.
        self.method = f"x4-{model_tag}-tiled{tiles[0]}-{tiles[1]}" if self.x4 else "lanczos"

    def prepare(self, image: str, prompt: str, width_in: float, height_in: float) -> Path:
        """The print file of `image` (relative to the book) for a `width_in` x `height_in` inch place: cropped to that
        shape around its centre, at least PRINT_DPI. `prompt` guides the x4 upscaler."""
        size = (math.ceil(width_in * PRINT_DPI), math.ceil(height_in * PRINT_DPI))
        target = self.folder / PRINT_DIR / f"{Path(image).stem}-{size[0]}x{size[1]}-{self.method}.jpg"
        if target.exists():
            return book_file(self.folder, str(target.relative_to(self.folder)))
        picture = Image.open(book_file(self.folder, image)).convert("RGB")
        if self.x4 is not None:
            picture = upscale_tiled(lambda tiles: self.upscale(tiles, prompt), picture, 4, *self.tiles)
        fitted = ImageOps.fit(picture, size, Image.Resampling.LANCZOS)  # crop to the place's shape, then resample
        data = io.BytesIO()
        fitted.save(data, format="JPEG", quality=92, subsampling=0, dpi=(PRINT_DPI, PRINT_DPI))
        atomic_write_bytes(target, data.getvalue())
        return target

    def upscale(self, tiles: list[Image.Image], prompt: str) -> list[Image.Image]:
        """`tiles` enlarged by the x4 upscaler under `prompt`, each with a fresh generator of seed 0."""
        import torch

        with UPSCALING:
            return self.x4(
                prompt=[prompt] * len(tiles),
                image=tiles,
                num_inference_steps=X4_STEPS,
                generator=[torch.Generator("cpu").manual_seed(0) for _ in tiles],
            ).images
