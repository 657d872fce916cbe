"""Photo loading, checking and cropping, on images generated here (no network, no committed binaries)."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from storybook import photos
from storybook.errors import PhotoError


def scene(seed: int, size: tuple[int, int] = (640, 480), shift: int = 0) -> Image.Image:
    """A random arrangement of coloured discs: different seeds give clearly different pictures."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = int(rng.integers(0, width)) + shift, int(rng.integers(0, height)), int(rng.integers(20, 120))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def drawn_face(size: tuple[int, int] = (640, 480), centre: tuple[int, int] = (400, 220), face_h: int = 180):
    """A cartoon face simple enough to draw and realistic enough for OpenCV's frontal Haar cascade."""
    cx, cy = centre
    face_w = face_h * 0.78
    half_w, half_h = face_w / 2, face_h / 2
    image = Image.new("RGB", size, (90, 120, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse(
        [cx - face_w / 2 - 4, cy - face_h / 2 - 20, cx + face_w / 2 + 4, cy + face_h * 0.05], fill=(60, 40, 30)
    )
    draw.ellipse([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=(224, 180, 150))
    eye_y, eye_dx, eye_r = cy - face_h * 0.08, face_w * 0.2, face_w * 0.09
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_r, eye_y - eye_r * 0.55, ex + eye_r, eye_y + eye_r * 0.55], fill=(40, 30, 30))
        draw.rectangle(
            [ex - eye_r * 1.3, eye_y - face_h * 0.12, ex + eye_r * 1.3, eye_y - face_h * 0.09], fill=(70, 50, 40)
        )
    nose = [
        (cx, eye_y + face_h * 0.02),
        (cx - face_w * 0.07, cy + face_h * 0.15),
        (cx + face_w * 0.07, cy + face_h * 0.15),
    ]
    draw.polygon(nose, fill=(190, 145, 120))
    draw.ellipse([cx - face_w * 0.17, cy + face_h * 0.24, cx + face_w * 0.17, cy + face_h * 0.31], fill=(150, 70, 70))
    return image.filter(ImageFilter.GaussianBlur(2))


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def photo_set(tmp_path: Path, count: int) -> list[Path]:
    return [save(scene(seed), tmp_path / f"photo{seed}.jpg") for seed in range(count)]


def problems_of(paths, **kwargs) -> dict[str, str]:
    with pytest.raises(PhotoError) as caught:
        photos.load_photos(paths, **kwargs)
    return caught.value.problems


def load_error(path: Path) -> str:
    with pytest.raises(PhotoError) as caught:
        photos.load_photo(path)
    assert list(caught.value.problems) == [str(path)]
    return caught.value.problems[str(path)]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming a huge size but holding a few bytes of pixel data: decoding it would fail, not allocate."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_loads_a_good_set_in_order(tmp_path):
    paths = photo_set(tmp_path, 3)
    images = photos.load_photos(paths)
    assert [image.size for image in images] == [(640, 480)] * 3
    assert all(image.mode == "RGB" for image in images)
    assert images[1].getpixel((0, 0)) == pytest.approx(scene(1).getpixel((0, 0)), abs=12)


def test_random_bytes_named_jpg_is_refused(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "JPEG or PNG" in load_error(path)


def test_truncated_jpeg_is_refused(tmp_path):
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    message = load_error(path)
    assert "damaged" in message and "export it again" in message


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is a shopping list, not a photo\n" * 20)
    assert load_error(path).startswith("not an image file")


def test_missing_file_is_refused(tmp_path):
    assert "not found" in load_error(tmp_path / "nowhere.jpg")


def test_too_small_names_size_and_minimum(tmp_path):
    small = save(scene(7, size=(200, 150)), tmp_path / "thumb.png")
    problems = problems_of([*photo_set(tmp_path, 3), small])
    assert list(problems) == [str(small)]
    assert "200×150" in problems[str(small)] and str(photos.MIN_SIDE) in problems[str(small)]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(12_000, 10_000))  # 120 MP: above our limit, below PIL's own error
    message = load_error(path)
    assert message == "image is too large (12000×10000): resize it below 100 megapixels"


def test_bomb_beyond_pils_own_limit_is_refused(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(30_000, 30_000))  # PIL itself raises DecompressionBombError in Image.open
    assert load_error(path).startswith("image is too large")


def test_pixel_limit_is_read_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setattr(photos, "MAX_PIXELS", 10_000)
    assert "too large (300×300)" in load_error(save(scene(3, size=(300, 300)), tmp_path / "big.png"))


def test_too_few_photos(tmp_path):
    problems = problems_of(photo_set(tmp_path, 2))
    assert list(problems) == ["photos"] and "at least 3" in problems["photos"]


def test_too_many_photos(tmp_path):
    problems = problems_of(photo_set(tmp_path, 4), max_count=3)
    assert list(problems) == ["photos"] and "at most 3" in problems["photos"]


def test_every_problem_is_reported_together(tmp_path):
    good = photo_set(tmp_path, 3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    missing = tmp_path / "missing.jpg"
    small = save(scene(8, size=(100, 100)), tmp_path / "small.png")
    copy = save(scene(0).resize((400, 300)), tmp_path / "copy.jpg", quality=60)
    problems = problems_of([*good, broken, missing, small, copy, good[0]], max_count=6)
    assert set(problems) == {"photos", str(broken), str(missing), str(small), str(copy), str(good[0])}
    assert problems[str(copy)] == f"near-duplicate of {good[0]}: remove one of them"
    assert "more than once" in problems[str(good[0])]


def test_heic_loads_as_rgb(tmp_path):
    path = save(scene(4, size=(320, 280)), tmp_path / "IMG_0001.heic")
    image = photos.load_photo(path)
    assert image.mode == "RGB" and image.size == (320, 280)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (300, 200), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 40))  # red marks the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": stored top-left shows at the top right
    loaded = photos.load_photo(save(image, tmp_path / "phone.jpg", exif=exif, quality=95))
    assert loaded.size == (200, 300)
    assert loaded.getpixel((190, 10)) == pytest.approx((255, 0, 0), abs=30)
    assert loaded.getpixel((10, 10)) == pytest.approx((0, 0, 255), abs=30)


def test_cmyk_becomes_rgb(tmp_path):
    loaded = photos.load_photo(save(Image.new("CMYK", (300, 300), (0, 255, 255, 0)), tmp_path / "print.jpg"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((150, 150)) == pytest.approx((255, 0, 0), abs=10)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    grey16 = Image.fromarray(np.full((300, 300), 32768, dtype=np.uint16))
    assert grey16.mode == "I;16"
    loaded = photos.load_photo(save(grey16, tmp_path / "scan.png"))
    assert loaded.mode == "RGB" and loaded.getpixel((5, 5)) == (128, 128, 128)


def test_float_grey_is_scaled(tmp_path):
    loaded = photos.load_photo(save(Image.fromarray(np.full((300, 300), 0.5, np.float32)), tmp_path / "hdr.tif"))
    assert loaded.getpixel((5, 5)) == (128, 128, 128)


def test_alpha_is_laid_over_white(tmp_path):
    rgba = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 128), (0, 0, 150, 300))
    loaded = photos.load_photo(save(rgba, tmp_path / "cutout.png"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((250, 10)) == (255, 255, 255)
    assert loaded.getpixel((10, 10)) == pytest.approx((255, 127, 127), abs=2)


def test_palette_transparency_is_laid_over_white(tmp_path):
    palette = Image.new("P", (300, 300), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 100, 300))
    loaded = photos.load_photo(save(palette, tmp_path / "sticker.png", transparency=0))
    assert loaded.getpixel((250, 10)) == (255, 255, 255)
    assert loaded.getpixel((10, 10)) == (255, 0, 0)


def test_resized_reencoded_copy_is_a_near_duplicate():
    original = scene(5)
    buffer = io.BytesIO()
    original.resize((200, 150), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=50)
    copy = Image.open(buffer).convert("RGB")
    assert photos.find_near_duplicates([scene(9), original, scene(10), copy]) == [(1, 3)]


def test_different_shots_of_one_scene_are_not_duplicates():
    assert photos.find_near_duplicates([scene(6), scene(6, shift=60), scene(11), scene(12)]) == []


def test_prepare_photo_size_and_mode():
    prepared = photos.prepare_photo(Image.new("L", (500, 300), 90), 64)
    assert prepared.size == (64, 64) and prepared.mode == "RGB"


def test_no_face_gives_centre_crop():
    stripes = Image.new("RGB", (600, 200), (255, 0, 0))
    stripes.paste((0, 255, 0), (200, 0, 400, 200))
    stripes.paste((0, 0, 255), (400, 0, 600, 200))
    assert photos.face_box(stripes) is None
    prepared = photos.prepare_photo(stripes, 32)
    assert prepared.getpixel((1, 16)) == pytest.approx((0, 255, 0), abs=20)
    assert prepared.getpixel((30, 16)) == pytest.approx((0, 255, 0), abs=20)


def test_face_box_is_none_on_a_gradient():
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))).convert("RGB")
    assert photos.face_box(gradient) is None


def test_face_box_finds_a_drawn_face():
    box = photos.face_box(drawn_face())
    assert box is not None
    left, top, right, bottom = box
    assert abs((left + right) / 2 - 400) < 15 and abs((top + bottom) / 2 - 220) < 20
    assert 140 < bottom - top < 240


def test_crop_centres_a_real_detection():
    prepared = photos.prepare_photo(drawn_face(), 256)
    assert prepared.size == (256, 256)
    left, top, right, bottom = photos.face_box(prepared)
    assert abs((left + right) / 2 - 128) < 15 and abs((top + bottom) / 2 - 128) < 15
    assert 80 < bottom - top < 130  # about 256 / 2.5: head and shoulders, not a close-up


def position_map(width: int, height: int) -> Image.Image:
    """Red encodes x and green encodes y, so a crop's colours say where it was taken from."""
    xs = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).round().astype(np.uint8))


def source_xy(pixel: tuple[int, int, int], width: int, height: int) -> tuple[float, float]:
    return pixel[0] / 255 * (width - 1), pixel[1] / 255 * (height - 1)


def test_crop_geometry_around_a_face(monkeypatch):
    monkeypatch.setattr(photos, "face_box", lambda image: (550, 250, 630, 350))  # 100 px tall face
    prepared = photos.prepare_photo(position_map(1000, 600), 250)  # 250 px side: no scaling
    x, y = source_xy(prepared.getpixel((125, 125)), 1000, 600)
    assert abs(x - 590) < 5 and abs(y - 300) < 5
    x0, y0 = source_xy(prepared.getpixel((0, 0)), 1000, 600)
    assert abs(x0 - 465) < 5 and abs(y0 - 175) < 5


def test_crop_is_clamped_into_the_image(monkeypatch):
    monkeypatch.setattr(photos, "face_box", lambda image: (900, 10, 990, 110))
    prepared = photos.prepare_photo(position_map(1000, 600), 250)
    x0, y0 = source_xy(prepared.getpixel((0, 0)), 1000, 600)
    x1, y1 = source_xy(prepared.getpixel((249, 249)), 1000, 600)
    assert abs(x0 - 750) < 5 and abs(y0) < 5 and abs(x1 - 999) < 5 and abs(y1 - 249) < 5


def test_crop_never_exceeds_the_short_side(monkeypatch):
    monkeypatch.setattr(photos, "face_box", lambda image: (300, 50, 700, 550))  # 2.5 x 500 > 600
    prepared = photos.prepare_photo(position_map(1000, 600), 600)
    x0, y0 = source_xy(prepared.getpixel((0, 0)), 1000, 600)
    x1, y1 = source_xy(prepared.getpixel((599, 599)), 1000, 600)
    assert abs(x0 - 200) < 5 and abs(y0) < 5 and abs(x1 - 799) < 5 and abs(y1 - 599) < 5


def test_grey_with_alpha_is_laid_over_white(tmp_path):
    grey = Image.new("LA", (300, 300), (100, 0))
    grey.paste((100, 255), (0, 0, 100, 300))
    loaded = photos.load_photo(save(grey, tmp_path / "grey.png"))
    assert loaded.getpixel((10, 10)) == (100, 100, 100) and loaded.getpixel((250, 10)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("image.jpg", "image.jpg"),
        ("..", "photo"),
        ("", "photo"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\IMG 1.JPG", "IMG 1.JPG"),
        ("a\x00b\n.png", "ab.png"),
        ("名" * 300 + ".heic", "名" * 55 + ".heic"),
    ],
)
def test_uploads_are_stored_under_a_safe_name(sent, stored, tmp_path):
    name = photos.upload_file_name(sent)
    assert name == stored
    (tmp_path / name).write_bytes(b"x")  # a name every file system takes
