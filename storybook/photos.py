"""Reading a parent's photos safely, checking them as a set, and cropping them square around the child's face."""

import functools
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from storybook.errors import PhotoError

MIN_PHOTOS = 3
MAX_PHOTOS = 30
# What a folder given as --photos is searched for (other files in it are left alone).
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MIN_SIDE = 256  # px, short side
MAX_PIXELS = 100_000_000  # refuse decompression bombs above this, before decoding pixels
NEAR_DUPLICATE_DISTANCE = 6  # of 64 phash bits: catches resized/re-encoded copies, not new shots of the same scene
HEAD_AND_SHOULDERS = 2.5  # crop side as a multiple of the face height
_DETECT_SIDE = 640  # faces are searched in a copy this size: Haar cascades are slow on 12 MP photos

# iPhones save HEIC; registering lets Image.open read it like any other format.
pillow_heif.register_heif_opener()

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_REEXPORT = "export it again as JPEG or PNG"


def load_photo(path: Path) -> Image.Image:
    """Open one photo as an 8-bit RGB PIL image, upright (EXIF orientation applied).

    Returns a fully decoded image not tied to the file. Raises PhotoError naming the file when it is missing,
    unreadable, not an image, damaged or truncated, or larger than MAX_PIXELS.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise PhotoError({name: "file not found: check the path, or copy the photo here again"})
    if not path.is_file():
        raise PhotoError({name: "not a file (a folder?): give the photo files themselves"})
    try:
        with Image.open(path) as image:
            # The header gives the size before any pixel is decoded, so a bomb costs nothing to refuse.
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise PhotoError({name: _too_large(width, height)})
            image.load()  # decode now, inside the try, so truncated files fail here and not later
            return _to_rgb(_upright(image))
    except PhotoError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL refuses some bombs itself, in Image.open, before we have read the size.
        raise PhotoError({name: f"image is too large: resize it below {MAX_PIXELS / 1e6:g} megapixels"}) from exc
    except PermissionError as exc:
        raise PhotoError({name: "cannot be read (permission denied): copy it somewhere you own and try again"}) from exc
    except UnidentifiedImageError as exc:
        raise PhotoError({name: f"not an image file (or damaged): {_REEXPORT}"}) from exc
    except Exception as exc:  # PIL's decoders raise many types (OSError, ValueError, SyntaxError, ...)
        raise PhotoError({name: f"damaged or incomplete image ({exc}): {_REEXPORT}"}) from exc


def load_photos(paths: Sequence[Path], min_count: int = MIN_PHOTOS, max_count: int = MAX_PHOTOS) -> list[Image.Image]:
    """Load and check a set of photos; returns them as upright 8-bit RGB images, in the given order.

    Raises ONE PhotoError listing every problem at once, so a parent can fix them all in one go: too few or too many
    photos (key "photos"), and per file: missing, unreadable, not an image, damaged, too large, too small, listed
    twice, or a near-duplicate of an earlier photo.
    """
    problems: dict[str, str] = {}
    count = len(paths)
    if count < min_count:
        problems["photos"] = f"only {count} photo(s) given: add at least {min_count} different photos of the child"
    elif count > max_count:
        problems["photos"] = f"{count} photos given: choose at most {max_count}, the clearest and most varied ones"
    # When the count is already wrong the call fails anyway, so only hashes are kept: 200 photos must not fill memory.
    keep_images = not problems

    names: list[str] = []
    hashes: list[imagehash.ImageHash] = []
    images: list[Image.Image] = []
    for path in paths:
        name = str(path)
        if name in names or name in problems:
            problems.setdefault(name, "listed more than once: give each photo once")
            continue
        try:
            image = load_photo(Path(path))
        except PhotoError as err:
            problems.update(err.problems)
            continue
        width, height = image.size
        if min(width, height) < MIN_SIDE:
            problems[name] = (
                f"too small ({width}×{height}): use a photo at least {MIN_SIDE} pixels on its short side "
                "(the original, not a thumbnail or a screenshot)"
            )
            continue
        names.append(name)
        hashes.append(_phash(image))
        if keep_images:
            images.append(image)

    for i, j in _close_pairs(hashes, NEAR_DUPLICATE_DISTANCE):
        problems.setdefault(names[j], f"near-duplicate of {names[i]}: remove one of them")
    if problems:
        raise PhotoError(problems)
    return images


def find_near_duplicates(
    images: Sequence[Image.Image], max_distance: int = NEAR_DUPLICATE_DISTANCE
) -> list[tuple[int, int]]:
    """Return index pairs (i, j), i < j, of images whose perceptual hashes are within `max_distance` bits (of 64).

    Resized or re-encoded copies of one photo are within a few bits; different shots usually are not. Raises nothing.
    """
    return _close_pairs([_phash(image) for image in images], max_distance)


def face_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Return the largest frontal face as (left, top, right, bottom) in pixels of `image`, or None when none is found.

    Uses OpenCV's bundled Haar cascade (no model download). Raises nothing; a missing cascade warns and gives None.
    """
    cascade = _face_cascade()
    if cascade is None:
        return None
    gray = image.convert("L")
    scale = min(1.0, _DETECT_SIDE / max(image.size))
    if scale < 1.0:
        gray = gray.resize(
            (max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), Image.Resampling.BOX
        )
    # Equalising helps with dim indoor photos and back-lit faces, where the cascade otherwise misses.
    pixels = cv2.equalizeHist(np.asarray(gray, dtype=np.uint8))
    faces = cascade.detectMultiScale(pixels, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda face: int(face[2]) * int(face[3]))
    return (
        max(0, round(x / scale)),
        max(0, round(y / scale)),
        min(image.width, round((x + w) / scale)),
        min(image.height, round((y + h) / scale)),
    )


def prepare_photo(image: Image.Image, resolution: int) -> Image.Image:
    """Return a square RGB image of side `resolution`, resized with LANCZOS.

    Centred on the largest face when one is found, with a head-and-shoulders framing (side about 2.5x the face
    height, never smaller than the face nor larger than the image's short side, moved to stay inside the image);
    otherwise the largest centred square. Raises ValueError for a resolution below 1.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be at least 1 pixel, got {resolution}")
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    width, height = rgb.size
    short = min(width, height)
    box = face_box(rgb)
    if box is None:
        side, centre_x, centre_y = short, width / 2, height / 2
    else:
        left, top, right, bottom = box
        face_w, face_h = right - left, bottom - top
        side = min(short, max(face_w, face_h, round(HEAD_AND_SHOULDERS * face_h)))
        centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    x0 = min(max(round(centre_x - side / 2), 0), width - side)
    y0 = min(max(round(centre_y - side / 2), 0), height - side)
    return rgb.resize((resolution, resolution), Image.Resampling.LANCZOS, box=(x0, y0, x0 + side, y0 + side))


def _too_large(width: int, height: int) -> str:
    return f"image is too large ({width}×{height}): resize it below {MAX_PIXELS / 1e6:g} megapixels"


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF should not cost a parent a good photo; keep it as stored
        return image.copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; high-bit grey is scaled (PIL's own convert clips it to white) and alpha is laid over white."""
    if image.mode in _HIGH_BIT_MODES:
        image = _high_bit_to_grey(image)
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_to_grey(image: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if image.mode != "F":
        scale = 1 / 257  # the 16-bit range 0..65535 onto 0..255
    elif values.max(initial=0.0) <= 1.0:
        scale = 255.0  # float images are normally 0..1
    else:
        scale = 1.0  # larger floats are taken to be 0..255 already
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))


def _phash(image: Image.Image) -> imagehash.ImageHash:
    # Hashing a thumbnail gives the same bits much faster than hashing a 12 MP photo.
    return imagehash.phash(ImageOps.contain(image, (256, 256), Image.Resampling.BOX))


def _close_pairs(hashes: Sequence[imagehash.ImageHash], max_distance: int) -> list[tuple[int, int]]:
    return [
        (i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes)) if hashes[i] - hashes[j] <= max_distance
    ]


@functools.cache
def _face_cascade() -> "cv2.CascadeClassifier | None":
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    if cascade.empty():
        # OpenCV 5 no longer ships the cascades; centre crops still work, so warn instead of failing.
        warnings.warn("OpenCV's Haar face cascade is missing: photos will be centre-cropped", stacklevel=3)
        return None
    return cascade


def upload_file_name(name: str) -> str:
    """A file name to store an upload under, from the name the browser sent: no folders, no control characters, at
    most 60 characters (240 bytes, under every file system's limit) with its extension kept, and "photo" for an empty
    or dot-only name."""
    base = "".join(c for c in name.replace("\\", "/").split("/")[-1] if unicodedata.category(c)[0] != "C").strip()
    if not base.strip("."):
        return "photo"
    stem, dot, suffix = base.rpartition(".")
    if not dot or len(suffix) > 10:
        return base[:60]
    return f"{stem[: 59 - len(suffix)]}.{suffix}"
