"""The rules every story follows, whichever writer made it: page count, words per page, scene prompts that call up
exactly the characters on the page with their fixed look and the book's style, and kid-safe words.

Each check returns a list of problems in plain words: they are shown to a parent, and fed back to an LLM to fix.
"""

import re

from storybook.book import MAX_DEDICATION, MAX_TITLE, Book, BookCharacter, Page

# Words a toddler's book never needs; matched as whole words in page text and scene prompts.
UNSAFE_WORDS = frozenset(
    "kill kills killed killing blood bloody gun guns knife knives sword swords weapon weapons dead die dies death "
    "murder violence violent war bomb bombs nsfw naked nude sexy sex beer wine alcohol drunk cigarette cigarettes "
    "drug drugs hate stupid idiot horror gore corpse".split()
)
# Kept in every page's negative prompt so the renderer steers away from them.
SAFETY_NEGATIVE_PROMPT = "nsfw, nudity, violence, blood, weapon, scary, horror"
DEFAULT_NEGATIVE_PROMPT = f"{SAFETY_NEGATIVE_PROMPT}, text, watermark, signature, lowres, blurry, deformed hands"


def compose_prompt(scene: str, present: list[BookCharacter], style: str) -> str:
    """The scene prompt of a page: the scene, then each present character's phrase with its appearance, then the style.

    The appearance and style are added here, not by the writer, so that they are word for word the same on every page.
    """
    parts = [scene.strip().rstrip(".;, ")]
    parts += [f"{c.phrase}: {c.appearance}" for c in present if c.appearance.strip()]
    parts.append(style)
    return "; ".join(parts)


def count_words(text: str) -> int:
    """The number of words in `text` ("Mia's" and "splish-splash" count as one)."""
    return len(re.findall(r"\w[\w'’-]*", text))


def mentions(text: str, words: str) -> bool:
    """Whether `words` occurs in `text` as whole words, ignoring case and how much space separates them."""
    pattern = r"\s+".join(re.escape(word) for word in words.split())
    return re.search(rf"(?<!\w){pattern}(?!\w)", text, re.IGNORECASE) is not None


def unsafe_words(text: str) -> list[str]:
    """The words of `text` that are on the kid-safe block list, in order of appearance."""
    return [word for word in re.findall(r"[\w']+", text.lower()) if word in UNSAFE_WORDS]


def check_page(book: Book, page: Page, label: str) -> list[str]:
    """The problems of one page of `book`; `label` names the page in each message (e.g. 'page 3')."""
    problems = []
    words = count_words(page.text)
    if words == 0:
        problems.append(f"{label}: the text is empty.")
    elif words > book.max_words_per_page:
        problems.append(
            f"{label}: {words} words; a {book.age_band} book keeps to {book.max_words_per_page} words a page. "
            "Use fewer, shorter sentences."
        )
    if not page.scene.strip():
        problems.append(f"{label}: the scene is empty; say what the picture shows.")
    if len(set(page.characters)) != len(page.characters):
        problems.append(f"{label}: a character is listed twice.")
    known = {c.slug for c in book.characters}
    for slug in page.characters:
        if slug not in known:
            problems.append(f"{label}: {slug!r} is not one of the book's characters ({', '.join(sorted(known))}).")
    for character in book.characters:
        if character.slug in page.characters:
            if not (mentions(page.scene, character.phrase) and mentions(page.prompt, character.phrase)):
                problems.append(f"{label}: the scene must name {character.name} as '{character.phrase}'.")
            if character.appearance.strip() and character.appearance not in page.prompt:
                problems.append(
                    f"{label}: the scene prompt must keep {character.name}'s look '{character.appearance}' unchanged."
                )
        elif mentions(page.prompt, character.token):  # the scene is part of the prompt
            problems.append(
                f"{label}: the scene prompt calls up {character.name} ('{character.token}'), "
                "who is not listed on this page."
            )
    if book.style not in page.prompt:
        problems.append(f"{label}: the scene prompt must include the book's style '{book.style}'.")
    for where, text in (("text", page.text), ("scene prompt", page.prompt)):
        if found := unsafe_words(text):
            problems.append(f"{label}: the {where} uses words not meant for a toddler's book: {', '.join(found)}.")
    if SAFETY_NEGATIVE_PROMPT not in page.negative_prompt:
        problems.append(f"{label}: the negative prompt must keep the safety terms '{SAFETY_NEGATIVE_PROMPT}'.")
    return problems


def check_own_words(fields: dict[str, str]) -> list[str]:
    """The problems of the parent's own words (names, descriptions, style...), keyed by what each field is.

    These go on every page unchanged, so no writer can fix them: they are checked before any story is written.
    """
    return [
        f"{where} uses words not meant for a toddler's book: {', '.join(found)}."
        for where, text in fields.items()
        if (found := unsafe_words(text))
    ]


def check_book(book: Book, pages: int | None = None) -> list[str]:
    """Every problem of `book` (empty when it follows the rules); `pages` is the page count asked for, if any."""
    problems = []
    if pages is not None and len(book.pages) != pages:
        problems.append(f"The story has {len(book.pages)} pages; it must have exactly {pages}.")
    if not book.pages:
        problems.append("The story has no pages.")
    problems += check_front(book)
    for number, page in enumerate(book.pages, start=1):
        problems += check_page(book, page, f"page {number}")
    return problems


def check_front(book: Book) -> list[str]:
    """The problems of the title and the dedication: empty, too long to print, words not for a toddler's book."""
    problems = [] if book.title.strip() else ["The title is empty."]
    for where, text, most in (("title", book.title, MAX_TITLE), ("dedication", book.dedication, MAX_DEDICATION)):
        if len(text) > most:
            problems.append(f"The {where} has {len(text)} characters; at most {most} fit where it is printed.")
        if found := unsafe_words(text):
            problems.append(f"The {where} uses words not meant for a toddler's book: {', '.join(found)}.")
    return problems
