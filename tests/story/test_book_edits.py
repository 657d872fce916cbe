"""Editing a book: text, scene, prompt, adding, removing and moving pages; bad edits refused."""

import pytest

from storybook.errors import BookError
from storybook.story.book_edits import add_page, edit_front, edit_page, move_page, remove_page
from storybook.story.stage import StoryRequest, write_story


@pytest.fixture
def book(family_home):
    request = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="bedtime", pages=8, seed=4)
    book = write_story(family_home, request, "offline")[1]
    return book.model_copy(update={"pages": [p.model_copy(update={"image": "pages/p.png"}) for p in book.pages]})


def test_editing_the_text_keeps_the_picture(book):
    edited = edit_page(book, 2, text="Mia waves. Bye-bye!")
    assert edited.pages[1].text == "Mia waves. Bye-bye!"
    assert edited.pages[1].image == "pages/p.png"
    assert book.pages[1].text != edited.pages[1].text  # the original is untouched


def test_a_new_scene_recomposes_the_prompt_and_finds_its_characters(book):
    edited = edit_page(book, 1, scene="zorv toddler and qwib dog building a blanket fort")
    page = edited.pages[0]
    assert page.characters == ["mia", "rex"]
    assert page.prompt.startswith("zorv toddler and qwib dog building a blanket fort; zorv toddler: 2-year-old girl")
    assert "qwib dog: small brown puppy" in page.prompt and page.prompt.endswith(book.style)
    assert page.image is None  # the old picture no longer matches


def test_an_edit_that_breaks_a_rule_is_refused(book):
    with pytest.raises(BookError, match="page 3: 21 words"):
        edit_page(book, 3, text=" ".join(["la"] * 21))
    with pytest.raises(BookError, match="must name Rex as 'qwib dog'"):
        edit_page(book, 3, scene="zorv toddler alone", characters=["mia", "rex"])
    with pytest.raises(BookError, match="no page 9"):
        edit_page(book, 9, text="Hi")


def test_add_remove_and_move_pages(book):
    added = add_page(book, 2, "Rex wants a hug too.", "qwib dog hugging zorv toddler")
    assert len(added.pages) == 9
    assert added.pages[1].characters == ["mia", "rex"]
    assert added.pages[1].seed not in {p.seed for p in book.pages}
    moved = move_page(added, 2, 9)
    assert moved.pages[-1] == added.pages[1] and moved.pages[1] == added.pages[2]
    removed = remove_page(moved, 9)
    assert removed.pages == book.pages
    with pytest.raises(BookError, match="1 to 10"):
        add_page(added, 11, "Hi", "a park")
    with pytest.raises(BookError, match="at least 8 pages"):
        remove_page(book, 1)
    with pytest.raises(BookError, match="already has 24 pages"):
        add_page(book.model_copy(update={"pages": book.pages * 3}), 1, "Hi", "a park")


@pytest.mark.parametrize(
    "edit",
    [
        lambda book: edit_page(book, 2, text="Mia waves\x1b]0;owned\x07 bye."),
        lambda book: edit_page(book, 2, scene="zorv toddler waves \u202egnidaer"),
        lambda book: add_page(book, 3, text="Hi!", scene="zorv toddler waves\x1b[8m"),
        lambda book: edit_front(book, title="Mia\x1b[2J"),
        lambda book: edit_front(book, dedication="For Mia \u2066x\u2069"),
        lambda book: edit_page(book, 2, scene="zorv toddler " + "runs " * 2000),
    ],
    ids=["text", "scene", "new page", "title", "dedication", "huge scene"],
)
def test_an_edit_with_control_characters_or_a_huge_text_is_refused_saying_so(book, edit):
    with pytest.raises(BookError, match="The edit was not saved: .*(control or invisible characters|at most 5000)"):
        edit(book)
