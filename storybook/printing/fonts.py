"""The book's fonts: Andika (shipped), and for text it has no glyphs for (a child named 李, א, emoji) a font of this
machine that has them. reportlab embeds TrueType fonts only, so a text no TrueType font here can draw is refused
rather than printed as empty boxes.
"""

import functools
import hashlib
from pathlib import Path

from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont, TTFontFile

from storybook.book import Book
from storybook.errors import BookError

FONT, BOLD_FONT = "Andika", "Andika-Bold"
FONT_DIR = Path(__file__).resolve().parent / "fonts"
SHIPPED_FONTS = {FONT: FONT_DIR / "Andika-Regular.ttf", BOLD_FONT: FONT_DIR / "Andika-Bold.ttf"}
# Where the fonts of Linux, macOS and Windows are; searched (Noto and DejaVu first) only for text Andika lacks.
SYSTEM_FONT_DIRS = (
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".local" / "share" / "fonts",
    Path.home() / ".fonts",
    Path("/Library/Fonts"),
    Path("/System/Library/Fonts"),
    Path("C:/Windows/Fonts"),
)


def register_fonts() -> None:
    """Register the shipped TTF fonts with reportlab, which embeds (a subset of) each font it uses."""
    for name, path in SHIPPED_FONTS.items():
        if name not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont(name, path))


@functools.cache
def font_characters(path: Path) -> frozenset[int]:
    """The code points the TrueType font at `path` has glyphs for (none when reportlab cannot read it)."""
    try:
        return frozenset(TTFontFile(str(path)).charToGlyph)
    except Exception:  # CFF outlines, damaged files: reportlab reads TrueType outlines only
        return frozenset()


def missing_characters(text: str, path: Path) -> str:
    """The characters of `text` (other than spaces and line breaks) the font at `path` has no glyph for, in order."""
    covered = font_characters(path)
    return "".join(dict.fromkeys(c for c in text if not c.isspace() and ord(c) not in covered))


def system_fonts(folders: tuple[Path, ...], bold: bool) -> list[Path]:
    """The TrueType files (.ttf, .ttc) under `folders` (looked at each time: a font installed meanwhile counts), the
    plainest first: Noto and DejaVu, upright, of the weight asked for, then the rest by name."""
    files = [
        path
        for folder in folders
        if folder.is_dir()
        for path in folder.rglob("*")
        if path.suffix.lower() in {".ttf", ".ttc"}
    ]

    def plainness(path: Path) -> tuple:
        styles = sum(style in path.stem for style in ("Italic", "Oblique", "Condensed", "Light", "Mono", "Math"))
        return (not path.name.startswith(("Noto", "DejaVu")), styles, ("Bold" in path.stem) != bold, path.name)

    return sorted(files, key=plainness)


def fallback_font(text: str, bold: bool, folders: tuple[Path, ...] | None = None) -> Path | None:
    """The plainest font under `folders` (default: SYSTEM_FONT_DIRS) with a glyph for every character of `text`, or
    None."""
    candidates = system_fonts(folders or SYSTEM_FONT_DIRS, bold)
    return next((path for path in candidates if not missing_characters(text, path)), None)


def printable_font(text: str, font: str, folders: tuple[Path, ...] | None = None) -> str:
    """The registered font to draw `text` in: `font` (shipped) when it has every glyph, else a fallback from
    `folders`, registered on first use. Raises BookError naming the characters no font here can print."""
    if not missing_characters(text, SHIPPED_FONTS[font]):
        return font
    path = fallback_font(text, font == BOLD_FONT, folders)
    if path is None:
        raise BookError(
            f"no font on this machine can print {missing_characters(text, SHIPPED_FONTS[font])!r} (they would print "
            "as empty boxes): change the text, or install a TrueType font that has them (for Chinese, e.g. Debian's "
            "fonts-wqy-zenhei) and export again."
        )
    name = f"fallback-{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(name, path))
    return name


def glyph_warnings(book: Book, folders: tuple[Path, ...] | None = None) -> list[str]:
    """What to tell the parent, when the text is written, about characters the book's font lacks: which font will
    print them instead, or that none here can."""
    texts = {
        "the title": (book.title, BOLD_FONT),
        "the child's name": (book.child, FONT),
        "the dedication": (book.dedication, FONT),
        **{f"page {n}": (page.text, FONT) for n, page in enumerate(book.pages, start=1)},
    }
    warnings = []
    for label, (text, font) in texts.items():
        if missing := missing_characters(text, SHIPPED_FONTS[font]):
            path = fallback_font(text, font == BOLD_FONT, folders)
            warnings.append(
                f"{label} has {missing!r}, which the book's font (Andika) lacks: "
                + (
                    f"it will print in {path.stem}."
                    if path
                    else "no font on this machine has them, so export will "
                    "refuse it; change the text or install a TrueType font that has them."
                )
            )
    return warnings
