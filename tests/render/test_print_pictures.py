"""Enlarging pictures for print: the x4 upscaler works in overlapping tiles, blended, and is loaded once per process."""

import numpy as np
import pytest
from PIL import Image

from storybook.render.print_pictures import PrintPictures, tile_starts, upscale_tiled
from tests.printing.test_book_pdf import tiny_x4_upscaler


def test_tiles_cover_the_picture_with_the_overlap_asked_and_end_flush():
    assert tile_starts(100, 128, 16) == [0]
    assert tile_starts(512, 128, 16) == [0, 112, 224, 336, 384]
    for length in (129, 300, 512, 1024):
        starts = tile_starts(length, 128, 16)
        assert starts[0] == 0 and starts[-1] + 128 == length
        assert all(0 < b - a <= 112 for a, b in zip(starts, starts[1:], strict=False))


def nearest(tiles):
    """A stand-in upscaler: each pixel repeated 4 x 4 (enlarging by it must give the same picture tiled or not)."""
    return [tile.resize((tile.width * 4, tile.height * 4), Image.Resampling.NEAREST) for tile in tiles]


def test_tiled_enlarging_blends_into_the_picture_an_untiled_one_makes():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    calls = []

    def recording(tiles):
        calls.append([tile.size for tile in tiles])
        return nearest(tiles)

    tiled = upscale_tiled(recording, picture, tile=16, overlap=4, batch=3)
    assert tiled.size == (224, 160)
    np.testing.assert_array_equal(np.asarray(tiled), np.asarray(nearest([picture])[0]))  # seamless: same pixels
    assert all(size == (16, 16) for call in calls for size in call) and max(len(call) for call in calls) == 3
    assert sum(len(call) for call in calls) == len(tile_starts(56, 16, 4)) * len(tile_starts(40, 16, 4))


@pytest.mark.slow
def test_the_random_weight_x4_upscaler_enlarges_in_tiles_and_is_loaded_once(tmp_path, monkeypatch):
    book = tmp_path / "book"
    (book / "images").mkdir(parents=True)
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    picture.save(book / "images" / "page.png")
    x4_folder = tiny_x4_upscaler(tmp_path / "x4")
    first = PrintPictures(book, "x4", upscaler_model=str(x4_folder), device="cpu", tiles=(16, 4))  # nine tiles
    sizes = []
    pipeline_call = type(first.x4).__call__

    def recording(pipeline, **arguments):
        sizes.extend(tile.size for tile in arguments["image"])
        return pipeline_call(pipeline, **arguments)

    monkeypatch.setattr(type(first.x4), "__call__", recording)
    printed = first.prepare("images/page.png", "a beach", 1.0, 1.0)
    assert Image.open(printed).size == (300, 300) and printed.name.endswith("-tiled16-4.jpg")
    assert sizes == [(16, 16)] * len(tile_starts(32, 16, 4)) ** 2
    assert PrintPictures(book, "x4", upscaler_model=str(x4_folder), device="cpu").x4 is first.x4  # loaded once
