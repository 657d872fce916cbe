"""The printable book: a reportlab PDF with the cover, the dedication, one PDF page per story page and "The End".

Geometry follows the print services: the sheet (MediaBox, also the BleedBox) is the trim size plus bleed, the TrimBox
marks where the page is cut, there are no crop marks, and text stays 0.5 in inside the trim. Pictures reach into the
bleed and are placed at 300 DPI or more. Text is set in Andika (SIL Open Font License, shipped in storybook/fonts/),
embedded, body text 18 pt or larger. The page count is padded to an even number with a blank last page.
"""

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Literal

from PIL import Image
from reportlab.lib.colors import Color
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfgen.canvas import Canvas

from storybook.book import Book, Page, book_file, load_book
from storybook.config import X4_UPSCALER, DataRootConfig, load_config
from storybook.errors import BookError, CharacterError
from storybook.printing.fonts import BOLD_FONT, FONT, printable_font, register_fonts
from storybook.registry import identity_hash
from storybook.render.print_pictures import PrintPictures, Upscaler
from storybook.storage import user_file_target, write_user_file

Trim = Literal["8x8", "8.5x8.5", "8x10"]
Profile = Literal["kdp", "lulu", "screen"]
Layout = Literal["band", "below"]
TRIM_SIZES: dict[str, tuple[float, float]] = {"8x8": (8.0, 8.0), "8.5x8.5": (8.5, 8.5), "8x10": (8.0, 10.0)}  # in
INCH = 72.0  # points
BLEED = 0.125  # in
SAFE_MARGIN = 0.5  # in, inside the trim
BODY_PT = (28, 18)  # largest and smallest body size
LEADING = 1.25
BAND = Color(1, 1, 1, alpha=0.8)  # the soft band behind text over a picture

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 in points


@dataclass(frozen=True)
class Frame:
    """The geometry of one PDF page, in points: the whole sheet and the trimmed page inside it."""

    width: float
    height: float
    trim: Rect

    @property
    def sheet(self) -> Rect:
        """The MediaBox and BleedBox: everything printed, bleed included."""
        return (0.0, 0.0, self.width, self.height)

    @property
    def safe(self) -> Rect:
        """Where text may go: the trim less the safe margin."""
        x0, y0, x1, y1 = self.trim
        margin = SAFE_MARGIN * INCH
        return (x0 + margin, y0 + margin, x1 - margin, y1 - margin)


def page_frame(trim: Trim, profile: Profile, number: int) -> Frame:
    """The frame of PDF page `number` (1-based; odd pages are right-hand, their outer edge on the right).

    kdp: bleed on the top, bottom and outer edge; lulu: on all four sides; screen: none.
    """
    width, height = TRIM_SIZES[trim]
    left = right = top = bottom = 0.0
    if profile == "lulu":
        left = right = top = bottom = BLEED
    elif profile == "kdp":
        top = bottom = BLEED
        right, left = (BLEED, 0.0) if number % 2 else (0.0, BLEED)
    return Frame(
        width=(left + width + right) * INCH,
        height=(bottom + height + top) * INCH,
        trim=(left * INCH, bottom * INCH, (left + width) * INCH, (bottom + height) * INCH),
    )


def block_height(font: str, size: int, lines: int) -> float:
    """The height of `lines` lines of `font` at `size`: from the first line's ascent to the last line's descent."""
    ascent, descent = pdfmetrics.getAscentDescent(font, size)
    return (lines - 1) * size * LEADING + ascent - descent


def fit_text(text: str, font: str, width: float, height: float, sizes: tuple[int, int]) -> tuple[int, list[str]]:
    """The largest size in `sizes` (largest, smallest) at which `text` wraps into `width` x `height` points, and its
    lines. Raises BookError when it does not fit even at the smallest size (too long, or a word too wide)."""
    largest, smallest = sizes
    for size in range(largest, smallest - 1, -1):
        lines = [line for paragraph in text.splitlines() for line in simpleSplit(paragraph, font, size, width)]
        widest = max((pdfmetrics.stringWidth(line, font, size) for line in lines), default=0)
        if widest <= width and block_height(font, size, len(lines)) <= height:
            return size, lines
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise BookError(f"the text {shown!r} does not fit on its page even at {smallest} pt; shorten it.")


def draw_text(canvas: Canvas, text: str, font: str, box: Rect, sizes: tuple[int, int] = BODY_PT) -> None:
    """Draw `text` centred in `box`, as large as fits (see `fit_text`), in `font` or a font that has its glyphs (see
    `printable_font`); no glyph leaves the box."""
    x0, y0, x1, y1 = box
    font = printable_font(text, font)
    size, lines = fit_text(text, font, x1 - x0, y1 - y0, sizes)
    canvas.setFont(font, size)
    canvas.setFillColor(Color(0.13, 0.13, 0.18))
    ascent, _ = pdfmetrics.getAscentDescent(font, size)
    baseline = (y0 + y1) / 2 + block_height(font, size, len(lines)) / 2 - ascent  # the block centred vertically
    for line in lines:
        canvas.drawCentredString((x0 + x1) / 2, baseline, line)
        baseline -= size * LEADING


def text_height(text: str, font: str, width: float, sizes: tuple[int, int] = BODY_PT) -> float:
    """The height `text` takes at the largest size in `sizes` that fits in a third of a page."""
    font = printable_font(text, font)
    size, lines = fit_text(text, font, width, 3 * INCH, sizes)
    return block_height(font, size, len(lines))


def draw_picture(canvas: Canvas, pictures: PrintPictures, page: Page, box: Rect) -> None:
    """Place the picture of `page` filling `box` (cropped to its shape) at print resolution."""
    x0, y0, x1, y1 = box
    path = pictures.prepare(page.image, page.prompt, (x1 - x0) / INCH, (y1 - y0) / INCH)
    canvas.drawImage(str(path), x0, y0, x1 - x0, y1 - y0)


def draw_band(canvas: Canvas, frame: Frame, y0: float, y1: float) -> None:
    """A soft white band across the whole sheet between heights `y0` and `y1`."""
    canvas.setFillColor(BAND)
    canvas.rect(0, y0, frame.width, y1 - y0, stroke=0, fill=1)


def draw_cover(canvas: Canvas, frame: Frame, book: Book, pictures: PrintPictures) -> None:
    """The cover: full-bleed cover art, the title on a band at the top, the child's name on a band at the bottom."""
    draw_picture(canvas, pictures, book.cover, frame.sheet)
    sx0, sy0, sx1, sy1 = frame.safe
    padding = 0.2 * INCH
    title_height = text_height(book.title, BOLD_FONT, sx1 - sx0, (44, 24))
    draw_band(canvas, frame, sy1 - title_height - padding, frame.height)
    draw_text(canvas, book.title, BOLD_FONT, (sx0, sy1 - title_height, sx1, sy1), (44, 24))
    starring = f"starring {book.child}"
    name_height = text_height(starring, FONT, sx1 - sx0, (28, 20))
    draw_band(canvas, frame, 0, sy0 + name_height + padding)
    draw_text(canvas, starring, FONT, (sx0, sy0, sx1, sy0 + name_height), (28, 20))


def draw_story_page(canvas: Canvas, frame: Frame, page: Page, layout: Layout, pictures: PrintPictures) -> None:
    """A story page: the picture with the text below it, or over it on a soft band (`layout`)."""
    sx0, sy0, sx1, sy1 = frame.safe
    if layout == "below":
        picture_bottom = frame.trim[1] + 0.3 * (frame.trim[3] - frame.trim[1])
        draw_picture(canvas, pictures, page, (0, picture_bottom, frame.width, frame.height))
        draw_text(canvas, page.text, FONT, (sx0, sy0, sx1, picture_bottom - 0.2 * INCH))
        return
    draw_picture(canvas, pictures, page, frame.sheet)
    height = text_height(page.text, FONT, sx1 - sx0)
    draw_band(canvas, frame, 0, sy0 + height + 0.25 * INCH)
    draw_text(canvas, page.text, FONT, (sx0, sy0, sx1, sy0 + height))


def drawn_with_old_identities(home: Path, book: Book) -> list[str]:
    """The pages (and cover) of `book` whose picture was drawn with an identity that has been built again since in
    the data root `home` (a character that is not there, removed or from another data root, is not compared)."""
    current: dict[str, str] = {}
    for character in book.characters:
        try:
            current[character.slug] = identity_hash(home, character.slug)
        except CharacterError:
            continue
    numbered = [("cover", book.cover)] + [(f"page {n}", page) for n, page in enumerate(book.pages, start=1)]
    return [
        label
        for label, page in numbered
        if page and any(current.get(slug, drawn) != drawn for slug, drawn in page.identities.items())
    ]


def unrendered(folder: Path, book: Book) -> list[str]:
    """The pages (and cover) of the book in `folder` whose picture is not drawn yet (or its file is gone)."""
    numbered = [("cover", book.cover)] + [(f"page {n}", page) for n, page in enumerate(book.pages, start=1)]
    return [label for label, page in numbered if not (page and page.image and (folder / page.image).is_file())]


def picture_sizes(folder: Path, book: Book) -> dict[tuple[int, int], list[str]]:
    """The pixel sizes of the drawn pictures of the book in `folder`, each with the pages (and cover) drawn at it
    (only the files' headers are read)."""
    sizes: dict[tuple[int, int], list[str]] = {}
    numbered = [("cover", book.cover)] + [(f"page {n}", page) for n, page in enumerate(book.pages, start=1)]
    for label, page in numbered:
        if page and page.image:
            with Image.open(book_file(folder, page.image)) as picture:
                sizes.setdefault(picture.size, []).append(label)
    return sizes


def export_book(
    folder: Path,
    out: Path,
    profile: Profile = "kdp",
    trim: Trim = "8.5x8.5",
    layout: Layout = "band",
    upscaler: Upscaler = "auto",
    upscaler_model: str | None = None,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cover: bool = True,
    home: Path | None = None,
) -> int:
    """Write the book in `folder` as a PDF at `out` (atomically); return its page count. `cover=False` leaves the
    cover page out, for print services that take the cover as a file of its own (KDP, Lulu). With the data root
    `home`, pages drawn with an identity that has been rebuilt since are refused, and its config supplies the x4
    upscaler and its device where `upscaler_model` and `device` are None (default: X4_UPSCALER, the best device).

    Raises BookError when the book has no pages, pages have no picture yet, an outdated one or one of another size than
    the others (run `storybook render` first), or a text does not fit; OutputError when `out` cannot be written.
    """
    user_file_target(out)  # a place that cannot take the PDF is said before the work
    book = load_book(folder)
    if not book.pages:
        raise BookError(f"{folder.name} has no pages to print: add some with `storybook story add-page`.")
    if missing := unrendered(folder, book):
        raise BookError(
            f"{', '.join(missing)} of {folder.name} have no picture yet: run `storybook render {folder}` first (a "
            "page whose pictures the safety checker withheld needs another scene first, as the render said)."
        )
    if len(sizes := picture_sizes(folder, book)) > 1:  # pages drawn with other settings by an older storybook
        fewest = sorted(sizes.values(), key=len)[0]
        raise BookError(
            f"{', '.join(fewest)} of {folder.name} were drawn at another size than the other pages: run `storybook "
            f"render {folder}` to draw every page with the book's settings (one book, one size)."
        )
    if home is not None and (outdated := drawn_with_old_identities(home, book)):
        raise BookError(
            f"{', '.join(outdated)} of {folder.name} show an identity that was built again since they were drawn: run "
            f"`storybook render {folder}` to draw them with the current one (only they are redrawn)."
        )
    register_fonts()
    config = load_config(home) if home is not None else DataRootConfig()
    upscaler_model = upscaler_model or config.upscaler or X4_UPSCALER
    pictures = PrintPictures(folder, upscaler, upscaler_model, device or config.device)
    draws: list[tuple[str, Callable[[Canvas, Frame], None]]] = [
        ("the cover", lambda canvas, frame: draw_cover(canvas, frame, book, pictures)),
        ("the dedication", lambda canvas, frame: draw_text(canvas, book.dedication, FONT, frame.safe, (26, 18))),
    ][0 if cover else 1 :]
    for number, page in enumerate(book.pages, start=1):
        draws.append(
            (f"page {number}", lambda canvas, frame, page=page: draw_story_page(canvas, frame, page, layout, pictures))
        )
    draws.append(("The End", lambda canvas, frame: draw_text(canvas, "The End", BOLD_FONT, frame.safe, (54, 36))))
    if len(draws) % 2:
        draws.append(("a blank page", lambda canvas, frame: None))  # printers want an even page count
    data = BytesIO()
    canvas = Canvas(data, pagesize=(1, 1), pageCompression=1, initialFontName=FONT)  # no unembedded Helvetica
    canvas.setTitle(book.title)
    canvas.setAuthor(f"storybook, for {book.child}")
    for number, (label, draw) in enumerate(draws, start=1):
        frame = page_frame(trim, profile, number)
        canvas.setPageSize((frame.width, frame.height))
        canvas.setTrimBox(frame.trim)
        canvas.setBleedBox(frame.sheet)
        try:
            draw(canvas, frame)
        except BookError as error:
            raise BookError(f"{label}: {error}") from None
        canvas.showPage()
        if progress:
            progress(number, len(draws))
    canvas.save()
    write_user_file(out, data.getvalue())
    return len(draws)
