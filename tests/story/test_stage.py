"""Writing a story into a new book project: the writer chosen, the cast, the book saved."""

import pytest

from storybook import registry
from storybook.book import load_book
from storybook.errors import CharacterError, StoryError
from storybook.story.stage import StoryRequest, default_writer, load_cast, write_story


def test_the_writer_is_the_llm_only_when_one_is_configured(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert default_writer() == "offline"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    assert default_writer() == "llm"


def test_the_child_is_the_hero_whatever_the_order(family_home):
    cast = load_cast(family_home, StoryRequest(child="Mia", characters=["Rex", "Mia"], theme="bath"))
    assert [c.slug for c in cast] == ["mia", "rex"]
    assert cast[0].name == "Mia" and cast[0].phrase == "zorv toddler"
    assert cast[0].appearance == "2-year-old girl, curly red hair, yellow raincoat"


def test_a_written_story_is_saved_with_everything_needed_to_render_it(family_home):
    request = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="first day at daycare", pages=10, seed=8)
    folder, book = write_story(family_home, request, "offline")
    assert folder.parent == family_home / "books" and load_book(folder) == book
    assert book.writer == "offline" and book.age_band == "toddler" and book.max_words_per_page == 20
    assert len(book.pages) == 10 and len({p.seed for p in book.pages}) == 10
    assert all(p.image is None and "nsfw" in p.negative_prompt for p in book.pages)
    assert book.dedication == "For Mia, with love."
    again, _ = write_story(family_home, request, "offline")
    assert load_book(again).pages == book.pages  # the same seed writes the same book


def test_bad_requests_fail_before_anything_is_written(family_home):
    with pytest.raises(CharacterError, match="No character named 'Grandma'"):
        write_story(family_home, StoryRequest(child="Mia", characters=["Mia", "Grandma"], theme="bath"), "offline")
    with pytest.raises(StoryError, match="given twice"):
        write_story(family_home, StoryRequest(child="Mia", characters=["Mia", "mia"], theme="bath"), "offline")
    with pytest.raises(StoryError, match="Raise --max-words"):
        request = StoryRequest(child="Mia", theme="bath", max_words_per_page=3)
        write_story(family_home, request, "offline")
    with pytest.raises(StoryError, match="Bo's description uses words not meant for a toddler's book: sword"):
        registry.save_character(
            family_home,
            registry.load_character(family_home, "Bo").model_copy(update={"description": "teddy with a toy sword"}),
        )
        write_story(family_home, StoryRequest(child="Mia", characters=["Mia", "Bo"], theme="bath"), "llm")
    assert not (family_home / "books").exists()
