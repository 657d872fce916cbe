"""What a story writer is given (StoryBrief) and what it hands back (StoryDraft), whichever writer it is.

The brief is all a writer ever sees of the family: names, the parent's text descriptions and the theme. Photos and
images never enter it, so they can never reach an LLM.
"""

from pydantic import BaseModel, Field, field_validator

from storybook.book import BookCharacter, Pronouns
from storybook.text import without_hidden


class StoryBrief(BaseModel):
    """The story asked for: who is in it (the hero first), what it is about, and how long it is."""

    child: str
    pronouns: Pronouns
    theme: str
    pages: int
    age: int
    max_words_per_page: int
    characters: list[BookCharacter]  # characters[0] is the hero, named after the child


class DraftPage(BaseModel):
    """One page as a writer wrote it; the book adds each character's look and the style to the scene."""

    text: str = Field(description="The words printed on the page: short, simple sentences read aloud to a toddler.")
    scene: str = Field(
        description="What the picture shows, in one short sentence. Name every character drawn by its phrase "
        "(e.g. 'wuzz toddler'), exactly as given."
    )
    characters: list[str] = Field(description="The names of the characters drawn in the picture, as given.")

    @field_validator("text")
    @classmethod
    def plain_text(cls, text: str) -> str:
        """The text without the hidden characters a writer may return (storybook/text.py); its line breaks kept."""
        return without_hidden(text, lines=True)

    @field_validator("scene")
    @classmethod
    def plain_scene(cls, scene: str) -> str:
        """The scene without hidden characters: one line."""
        return without_hidden(scene)

    @field_validator("characters")
    @classmethod
    def plain_names(cls, names: list[str]) -> list[str]:
        """The names without hidden characters."""
        return [without_hidden(name) for name in names]


class StoryDraft(BaseModel):
    """A whole story as a writer returns it."""

    title: str = Field(description="A short title for the book.")
    pages: list[DraftPage]

    @field_validator("title")
    @classmethod
    def plain_title(cls, title: str) -> str:
        """The title without hidden characters: one line."""
        return without_hidden(title)
