"""Glyphs the book's font lacks: a font of this machine that has them prints them, or the text is refused."""

import shutil
from pathlib import Path

import pytest
import reportlab
from pypdf import PdfReader

from storybook.book import load_book, save_book
from storybook.errors import BookError
from storybook.printing import fonts
from storybook.printing.book_pdf import export_book

VERA = Path(reportlab.__file__).parent / "fonts" / "Vera.ttf"  # has '∘' (U+2218), which Andika lacks


@pytest.fixture
def font_folder(tmp_path, monkeypatch):
    """This machine's fonts, as far as the code can tell: an empty folder, to copy fonts into."""
    folder = tmp_path / "system-fonts"
    folder.mkdir()
    monkeypatch.setattr(fonts, "SYSTEM_FONT_DIRS", (folder,))
    return folder


def embedded_fonts(pdf: Path) -> set[str]:
    reader = PdfReader(pdf)
    return {str(f["/BaseFont"]) for page in reader.pages for f in page["/Resources"].get("/Font", {}).values()}


def test_a_glyph_the_font_lacks_prints_in_a_font_that_has_it_or_is_refused(drawn_book, tmp_path, font_folder):
    assert fonts.missing_characters("Mia ∘ Leo 李", fonts.SHIPPED_FONTS[fonts.FONT]) == "∘李"
    book = load_book(drawn_book)
    save_book(drawn_book, book.model_copy(update={"dedication": "For Mia ∘ with love"}))
    with pytest.raises(BookError, match=r"the dedication: no font on this machine can print '∘'"):
        export_book(drawn_book, tmp_path / "book.pdf")
    [warning] = fonts.glyph_warnings(load_book(drawn_book), (font_folder,))
    assert warning.startswith("the dedication has '∘'") and "export will refuse it" in warning

    shutil.copy(VERA, font_folder / "Vera.ttf")  # a font that has it is installed meanwhile
    assert "it will print in Vera" in fonts.glyph_warnings(load_book(drawn_book), (font_folder,))[0]
    export_book(drawn_book, tmp_path / "book.pdf")
    assert any("Vera" in name for name in embedded_fonts(tmp_path / "book.pdf"))  # embedded, not empty boxes
    assert any("Andika" in name for name in embedded_fonts(tmp_path / "book.pdf"))  # the rest stays in Andika

    save_book(drawn_book, book.model_copy(update={"title": "李的海滩"}))
    with pytest.raises(BookError, match="the cover: no font on this machine can print '李的海滩'"):
        export_book(drawn_book, tmp_path / "book.pdf")
