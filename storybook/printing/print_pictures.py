"""Pictures for print: cropped to the shape they are placed in and enlarged to at least 300 DPI at that size.

Enlarging uses diffusers' x4 upscaler when its weights are on this machine (and, with 'auto', a GPU to run it), and
high-quality Lanczos resampling otherwise. Results are JPEG files cached under <book>/print/, named after the picture,
the pixel size and the method, so exporting again with the same geometry (another layout's pages aside) reuses them.
"""

import hashlib
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from PIL import Image, ImageOps

from storybook.book import book_file
from storybook.errors import ModelError
from storybook.storage import atomic_write_bytes

if TYPE_CHECKING:
    from diffusers import StableDiffusionUpscalePipeline

PRINT_DPI = 300
PRINT_DIR = "print"
X4_UPSCALER = "stabilityai/stable-diffusion-x4-upscaler"
X4_STEPS = 20
Upscaler = Literal["auto", "x4", "lanczos"]


def load_x4_upscaler(model: str, device: str | None = None) -> "StableDiffusionUpscalePipeline | None":
    """diffusers' x4 upscaler from a local folder or the Hugging Face cache (never downloaded); None when absent."""
    from diffusers import StableDiffusionUpscalePipeline

    from storybook.models import pick_device, pick_dtype

    torch_device = pick_device(device)
    try:
        upscaler = StableDiffusionUpscalePipeline.from_pretrained(
            model, dtype=pick_dtype(torch_device), local_files_only=True
        )
    except (OSError, ValueError):
        return None
    upscaler.set_progress_bar_config(disable=True)
    return upscaler.to(torch_device)


class PrintPictures:
    """Makes the print files of a book's pictures, with the upscaler chosen once per export."""

    def __init__(
        self, folder: Path, upscaler: Upscaler = "auto", upscaler_model: str = X4_UPSCALER, device: str | None = None
    ):
        """Choose the method: 'x4' needs the upscaler's weights (ModelError otherwise); 'auto' uses them on a GPU."""
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
        self.method = f"x4-{model_tag}" if self.x4 else "lanczos"  # names the print files: another model, other files

    def prepare(self, image: str, prompt: str, width_in: float, height_in: float) -> Path:
        """The print file of `image` (relative to the book) for a `width_in` x `height_in` inch place: cropped to that
        shape around its centre, at least PRINT_DPI. `prompt` guides the x4 upscaler."""
        size = (math.ceil(width_in * PRINT_DPI), math.ceil(height_in * PRINT_DPI))
        target = self.folder / PRINT_DIR / f"{Path(image).stem}-{size[0]}x{size[1]}-{self.method}.jpg"
        if target.exists():
            return book_file(self.folder, str(target.relative_to(self.folder)))
        picture = Image.open(book_file(self.folder, image)).convert("RGB")
        if self.x4 is not None:
            import torch

            picture = self.x4(
                prompt=prompt,
                image=picture,
                num_inference_steps=X4_STEPS,
                generator=torch.Generator("cpu").manual_seed(0),
            ).images[0]
        fitted = ImageOps.fit(picture, size, Image.Resampling.LANCZOS)  # crop to the place's shape, then resample
        data = io.BytesIO()
        fitted.save(data, format="JPEG", quality=92, subsampling=0, dpi=(PRINT_DPI, PRINT_DPI))
        atomic_write_bytes(target, data.getvalue())
        return target
