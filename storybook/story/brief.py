"""What a story writer is given (StoryBrief) and what it hands back (StoryDraft), whichever writer it is.

The brief is all a writer ever sees of the family: names, the parent's text descriptions and the theme. Photos and
images never enter it, so they can never reach an LLM.
"""

from pydantic import BaseModel, Field

from storybook.book import BookCharacter, Pronouns


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


class StoryDraft(BaseModel):
    """A whole story as a writer returns it."""

    title: str = Field(description="A short title for the book.")
    pages: list[DraftPage]
