"""The story rules: scene prompts, words per page, characters, style and kid-safe words."""

import pytest

from storybook.story.checks import check_book, compose_prompt, count_words, mentions
from storybook.story.stage import StoryRequest, write_story


@pytest.fixture
def book(family_home):
    request = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="bedtime", pages=8, seed=2)
    return write_story(family_home, request, "offline")[1]


def with_page(book, **changes):
    """`book` with `changes` made to its first page that draws Mia alone."""
    index = next(i for i, page in enumerate(book.pages) if page.characters == ["mia"])
    pages = list(book.pages)
    pages[index] = pages[index].model_copy(update=changes)
    return book.model_copy(update={"pages": pages})


def mia_page(book):
    return next(page for page in book.pages if page.characters == ["mia"])


def test_a_written_story_follows_every_rule(book):
    assert check_book(book, pages=8) == []


def test_the_prompt_is_the_scene_then_each_look_then_the_style(book):
    mia, rex = book.characters
    prompt = compose_prompt("zorv toddler and qwib dog on a swing.", [mia, rex], "crayon drawing")
    assert prompt == (
        "zorv toddler and qwib dog on a swing; zorv toddler: 2-year-old girl, curly red hair, yellow raincoat; "
        "qwib dog: small brown puppy; crayon drawing"
    )


def test_each_broken_rule_is_named(book):
    mia, rex = book.characters
    cases = {
        "21 words": with_page(book, text=" ".join(["splash"] * 21)),
        "the text is empty": with_page(book, text=" "),
        "the scene must name Mia as 'zorv toddler'": with_page(book, scene="a girl", characters=["mia"]),
        "keep Mia's look": with_page(book, prompt=mia_page(book).prompt.replace("curly red hair", "straight hair")),
        "calls up Rex ('qwib'), who is not listed": with_page(book, prompt=mia_page(book).prompt + ", qwib"),
        "'grandma' is not one of the book's characters": with_page(book, characters=["mia", "grandma"]),
        "the book's style": with_page(book, prompt=mia_page(book).prompt.replace(book.style, "photo")),
        "words not meant for a toddler's book: knife": with_page(book, text="Mia finds a knife."),
        "must keep the safety terms": with_page(book, negative_prompt="blurry"),
        "has 7 pages; it must have exactly 8": book.model_copy(update={"pages": book.pages[:7]}),
    }
    for expected, broken in cases.items():
        problems = check_book(broken, pages=8)
        assert any(expected in problem for problem in problems), (expected, problems)


def test_words_are_counted_as_a_reader_would():
    assert count_words("Splish-splash! Mia's boat goes... whoosh - whoosh.") == 6


def test_a_phrase_is_found_whatever_the_spacing_but_only_as_whole_words():
    assert mentions("Zorv  toddler\non a swing", "zorv toddler")
    assert not mentions("zorvy toddler", "zorv toddler")
