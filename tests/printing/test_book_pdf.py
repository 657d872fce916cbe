"""The printable PDF, read back with pypdf: page count, boxes per profile, embedded fonts, picture DPI, text."""

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader
from reportlab.pdfbase import pdfmetrics

from storybook.book import load_book, save_book
from storybook.errors import BookError, ModelError, OutputError
from storybook.printing.book_pdf import BODY_PT, INCH, SAFE_MARGIN, TRIM_SIZES, export_book, fit_text
from storybook.printing.fonts import register_fonts
from storybook.registry import identity_hash
from storybook.render.print_pictures import PrintPictures


def boxes(page) -> tuple[list[float], list[float], list[float]]:
    return [[round(float(v), 2) for v in box] for box in (page.mediabox, page.trimbox, page.bleedbox)]


@pytest.mark.parametrize(
    "profile, recto, verso",
    [  # MediaBox and TrimBox in points for 8.5 x 8.5 in: 612 pt trimmed, 9 pt (0.125 in) of bleed
        ("kdp", ([0, 0, 621, 630], [0, 9, 612, 621]), ([0, 0, 621, 630], [9, 9, 621, 621])),
        ("lulu", ([0, 0, 630, 630], [9, 9, 621, 621]), ([0, 0, 630, 630], [9, 9, 621, 621])),
        ("screen", ([0, 0, 612, 612], [0, 0, 612, 612]), ([0, 0, 612, 612], [0, 0, 612, 612])),
    ],
)
def test_boxes_bleed_and_page_count_per_profile(drawn_book, tmp_path, profile, recto, verso):
    out = tmp_path / f"{profile}.pdf"
    pages = export_book(drawn_book, out, profile=profile)
    reader = PdfReader(out)
    assert pages == len(reader.pages) == 12  # cover, dedication, 8 pages, The End, and a blank page to make it even
    assert "The End" in reader.pages[10].extract_text() and not reader.pages[11].extract_text().strip()
    for number, page in enumerate(reader.pages, start=1):
        media, trim, bleed = boxes(page)
        assert (media, trim) == (recto if number % 2 else verso)
        assert bleed == media  # the bleed box is the whole sheet; no crop marks beyond it


@pytest.mark.parametrize("layout", ["band", "below"])
def test_fonts_are_embedded_pictures_are_300_dpi_and_text_is_readable_inside_the_safe_area(
    drawn_book, tmp_path, layout
):
    out = tmp_path / "book.pdf"
    export_book(drawn_book, out, profile="kdp", layout=layout)
    register_fonts()
    book = load_book(drawn_book)
    reader = PdfReader(out)
    text = "\n".join(page.extract_text() for page in reader.pages)
    for expected in [book.title, "starring Mia", book.dedication, *(p.text for p in book.pages), "The End"]:
        assert " ".join(expected.split()) in " ".join(text.split())

    for number, page in enumerate(reader.pages, start=1):
        for font in page["/Resources"].get("/Font", {}).values():
            font = font.get_object()
            descriptor = (font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font).get(
                "/FontDescriptor"
            )
            assert descriptor is not None and "/FontFile2" in descriptor.get_object(), f"page {number}: not embedded"
            assert "Andika" in font["/BaseFont"]
        pictures = placed_images(page)
        assert len(pictures) == (1 if number in (1, *range(3, 11)) else 0)  # the cover and the 8 story pages
        for width_pt, height_pt, name in pictures:
            image = page["/Resources"]["/XObject"][name].get_object()
            assert image["/Width"] / (width_pt / INCH) >= 300 and image["/Height"] / (height_pt / INCH) >= 300

        _, trim, _ = boxes(page)
        margin = SAFE_MARGIN * INCH

        def inside_safe_area(text, cm, tm, font_dict, font_size, trim=trim, margin=margin):
            if text.strip():
                x, y = tm[4] + cm[4], tm[5] + cm[5]
                font = "Andika-Bold" if "Bold" in font_dict["/BaseFont"] else "Andika"
                right = x + pdfmetrics.stringWidth(text.strip("\n"), font, font_size)
                ascent, descent = pdfmetrics.getAscentDescent(font, font_size)
                assert trim[0] + margin - 0.5 <= x and right <= trim[2] - margin + 0.5, text
                assert trim[1] + margin - 0.5 <= y + descent and y + ascent <= trim[3] - margin + 0.5, text
                assert font_size >= BODY_PT[1]

        page.extract_text(visitor_text=inside_safe_area)
    assert len(reader.pages) % 2 == 0


def placed_images(page) -> list[tuple[float, float, str]]:
    """(width, height, XObject name) of each picture drawn on `page`, from its `cm ... Do` operators."""
    content = page.get_contents().get_data().decode("latin-1")
    return [
        (float(a), float(d), name)
        for a, d, name in re.findall(r"([\d.]+) 0 0 ([\d.]+) [-\d.]+ [-\d.]+ cm\s*(/\S+) Do", content)
    ]


def test_interior_without_the_cover_for_print_services(drawn_book, tmp_path):
    out = tmp_path / "interior.pdf"
    assert export_book(drawn_book, out, profile="lulu", cover=False) == 10  # dedication, 8 pages, The End
    first_page = " ".join(PdfReader(out).pages[0].extract_text().split())
    assert "starring" not in first_page and load_book(drawn_book).dedication in first_page


@pytest.mark.parametrize("trim", ["8x8", "8x10"])
def test_trim_sizes(drawn_book, tmp_path, trim):
    out = tmp_path / "book.pdf"
    export_book(drawn_book, out, profile="screen", trim=trim, layout="band")
    width, height = TRIM_SIZES[trim]
    assert boxes(PdfReader(out).pages[3])[1] == [0, 0, width * INCH, height * INCH]


def test_export_refuses_unrendered_pages_and_leaves_no_file(drawn_book, tmp_path):
    book = load_book(drawn_book)
    book.pages[4].image = None
    save_book(drawn_book, book)
    with pytest.raises(BookError, match="page 5 .*storybook render"):
        export_book(drawn_book, tmp_path / "book.pdf")
    assert not (tmp_path / "book.pdf").exists()


def test_export_refuses_a_book_whose_pictures_have_mixed_sizes_and_leaves_no_file(drawn_book, tmp_path):
    book = load_book(drawn_book)  # a page drawn at another size (by an older storybook's `render --page`)
    Image.new("RGB", (48, 32), "white").save(drawn_book / book.pages[2].image)
    with pytest.raises(BookError, match="page 3 of .* another size than the other pages: run `storybook render"):
        export_book(drawn_book, tmp_path / "book.pdf")
    assert not (tmp_path / "book.pdf").exists()


def test_text_shrinks_to_fit_and_too_much_text_is_an_error():
    register_fonts()
    size, lines = fit_text("Mia runs on the warm sand. " * 4, "Andika", 300, 200, BODY_PT)
    assert BODY_PT[1] <= size < BODY_PT[0] and len(lines) * size * 1.25 <= 200
    with pytest.raises(BookError, match="shorten it"):
        fit_text("word " * 400, "Andika", 300, 200, BODY_PT)


def test_pictures_are_enlarged_for_print_with_lanczos_or_the_x4_upscaler(drawn_book, tmp_path):
    book = load_book(drawn_book)
    lanczos = PrintPictures(drawn_book, "lanczos").prepare(book.pages[0].image, "a beach", 2.0, 1.0)
    assert Image.open(lanczos).size == (600, 300) and lanczos.name.endswith("-600x300-lanczos.jpg")

    with pytest.raises(ModelError, match="--upscaler lanczos"):
        PrintPictures(drawn_book, "x4", upscaler_model=str(tmp_path / "missing"))
    x4_folder = tiny_x4_upscaler(tmp_path / "x4")
    x4 = PrintPictures(drawn_book, "x4", upscaler_model=str(x4_folder))
    upscaled = x4.prepare(book.pages[0].image, "a beach", 2.0, 1.0)
    assert x4.method.startswith("x4-") and Image.open(upscaled).size == (600, 300)
    assert not np.array_equal(np.asarray(Image.open(upscaled)), np.asarray(Image.open(lanczos)))


def tiny_x4_upscaler(folder):
    """A random-weight pipeline shaped like stabilityai/stable-diffusion-x4-upscaler (as in diffusers' tests)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from storybook.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        num_class_embeds=100,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    )
    StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350,
    ).save_pretrained(folder)
    return folder


def test_export_writes_through_to_regular_files_only_and_honours_the_umask(drawn_book, tmp_path):
    previous = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.pdf"
        export_book(drawn_book, fresh)
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # what the user's umask gives, not always 0600
        kept = tmp_path / "kept.pdf"
        kept.write_bytes(b"old")
        kept.chmod(0o600)
        export_book(drawn_book, kept)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_bytes().startswith(b"%PDF")
    finally:
        os.umask(previous)
    link = tmp_path / "link.pdf"
    link.symlink_to(kept)
    export_book(drawn_book, link)
    assert link.is_symlink() and PdfReader(kept).pages  # written through the link, which stays a link
    for place in (tmp_path, Path("/dev/null"), Path("")):
        with pytest.raises(OutputError, match="nothing was written there"):
            export_book(drawn_book, place)
    loop = tmp_path / "loop.pdf"
    loop.symlink_to(loop)
    with pytest.raises(OutputError, match="a symlink that leads nowhere"):
        export_book(drawn_book, loop)
    assert Path("/dev/null").is_char_device()
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(OutputError, match="Cannot write"):
            export_book(drawn_book, read_only / "book.pdf")


def test_export_names_the_text_that_does_not_fit_and_refuses_an_empty_book(drawn_book, tmp_path):
    book = load_book(drawn_book)
    save_book(drawn_book, book.model_copy(update={"dedication": "For Mia, with all our love. " * 60}))
    with pytest.raises(
        BookError, match=r"^the dedication: the text 'For Mia, with all our love. For Mia, wi[^']*\.\.\.'"
    ):
        export_book(drawn_book, tmp_path / "book.pdf")
    save_book(drawn_book, book.model_copy(update={"pages": []}))
    with pytest.raises(BookError, match="has no pages to print"):
        export_book(drawn_book, tmp_path / "book.pdf")
    assert not (tmp_path / "book.pdf").exists()


def test_pages_drawn_with_an_identity_built_again_since_are_refused(drawn_book, tmp_path):
    home = drawn_book.parent.parent
    identity = home / "characters" / "mia" / "identity"
    identity.mkdir(parents=True)
    (identity / "image_prompt.json").write_text('{"version": 1}')
    book = load_book(drawn_book)
    book.pages[2].identities = {"mia": identity_hash(home, "mia")}
    save_book(drawn_book, book)
    assert export_book(drawn_book, tmp_path / "book.pdf", home=home)  # the identity it was drawn with
    (identity / "image_prompt.json").write_text('{"version": 2}')  # Mia's identity built again
    with pytest.raises(BookError, match="page 3 of .* identity that was built again"):
        export_book(drawn_book, tmp_path / "book.pdf", home=home)


def test_a_book_cannot_point_export_at_files_outside_it(drawn_book, tmp_path):
    secret = tmp_path / "other-child.png"
    Image.new("RGB", (32, 32), "red").save(secret)
    record = json.loads((drawn_book / "book.json").read_text())
    for outside in (str(secret), "../../characters/mia/photos/00.jpg"):
        record["pages"][0]["image"] = outside
        (drawn_book / "book.json").write_text(json.dumps(record))
        with pytest.raises(BookError, match="damaged.*not a path inside its folder"):
            export_book(drawn_book, tmp_path / "book.pdf")
    (drawn_book / "images" / "link.png").symlink_to(secret)  # a sent book folder with a link out of it
    record["pages"][0]["image"] = "images/link.png"
    (drawn_book / "book.json").write_text(json.dumps(record))
    with pytest.raises(BookError, match="leads outside the book; it was not read"):
        export_book(drawn_book, tmp_path / "book.pdf")
