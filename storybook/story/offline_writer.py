"""The offline writer: toddler stories from the Jinja2 theme templates in templates/themes/, no network, no LLM.

A theme template renders to a title line and three sections of beats (see templates/README.md):

    title: Goodnight, {{ child }}
    [opening]
    The sun goes down. It is almost bedtime.
    > {{ hero }} looking out of a window at a pink sunset

    [middle]
    ...
    [closing]
    ...

A story of N pages is the opening, N - opening - closing beats of the middle (a seeded choice, kept in order) and the
closing. The characters on a page are those whose phrase the scene line names. The same seed gives the same story.
"""

import random
import re

import jinja2

from storybook.errors import StoryError
from storybook.storage import TEMPLATES_DIR
from storybook.story.brief import DraftPage, StoryBrief, StoryDraft
from storybook.story.checks import mentions

# theme template name -> words in a theme that pick it
THEMES = {
    "bedtime": ("bedtime", "bed", "sleep", "sleepy", "night", "goodnight", "moon"),
    "beach": ("beach", "sea", "seaside", "ocean", "sand", "waves"),
    "daycare": ("daycare", "nursery", "preschool", "kindergarten", "school"),
    "new-sibling": ("sibling", "baby", "brother", "sister"),
    "bath": ("bath", "bathtime", "bathtub", "bubbles", "wash"),
    "dinosaur": ("dinosaur", "dinosaurs", "dino", "dinos"),
}
OBJECT_AND_POSSESSIVE = {"she": ("her", "her"), "he": ("him", "his"), "they": ("them", "their")}
SECTIONS = ("opening", "middle", "closing")


def match_theme(theme: str) -> str:
    """The theme template a free-text theme asks for ('a day at the beach' -> 'beach'). Raises StoryError if none."""
    for name in THEMES:  # a theme's own name first: "a baby dinosaur" is a dinosaur story
        if mentions(theme, name):
            return name
    for name, words in THEMES.items():
        if any(mentions(theme, word) for word in words):
            return name
    raise StoryError(
        f"The offline writer has no story for the theme {theme!r}. Its themes: {', '.join(THEMES)} "
        "(or configure an LLM with OPENAI_API_KEY / OPENAI_BASE_URL and use --writer llm)."
    )


def join_names(names: list[str]) -> str:
    """'Mia', 'Mia and Rex', 'Mia, Rex and Bo'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def parse_beats(rendered: str, template: str) -> tuple[str, dict[str, list[tuple[str, str]]]]:
    """Split a rendered theme into its title and its sections of (text, scene) beats. Raises StoryError if malformed."""
    title = None
    sections: dict[str, list[tuple[str, str]]] = {name: [] for name in SECTIONS}
    section = None
    for block in re.split(r"\n\s*\n", rendered.strip()):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if lines and lines[0].startswith("title:"):
            title = lines.pop(0).removeprefix("title:").strip()
        if lines and re.fullmatch(r"\[\w+\]", lines[0]):
            section = lines.pop(0)[1:-1]
            if section not in sections:
                raise StoryError(f"{template}: unknown section [{section}]; use {', '.join(SECTIONS)}.")
        if not lines:
            continue
        text = " ".join(line for line in lines if not line.startswith(">"))
        scenes = [line[1:].strip() for line in lines if line.startswith(">")]
        if section is None or len(scenes) != 1 or not text:
            raise StoryError(f"{template}: each beat needs text lines and one '> scene' line, in a section: {block!r}")
        sections[section].append((text, scenes[0]))
    if not title or not sections["opening"] or not sections["closing"]:
        raise StoryError(f"{template}: needs a 'title:' line and [opening] and [closing] beats.")
    return title, sections


def write_offline(brief: StoryBrief, seed: int) -> StoryDraft:
    """Write the story of `brief` from its theme's template; the same seed gives the same story.

    Raises StoryError when no theme matches or the template cannot fill the pages asked for.
    """
    theme = match_theme(brief.theme)
    rng = random.Random(seed)
    hero, *friends = brief.characters
    them, their = OBJECT_AND_POSSESSIVE[brief.pronouns]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = f"themes/{theme}.j2"
    rendered = environment.get_template(template).render(
        child=brief.child,
        them=them,
        their=their,
        hero=hero.phrase,
        friends=friends,
        friend=friends[0] if friends else None,
        everyone=join_names([brief.child] + [f.name for f in friends]),
        everyone_scene=join_names([c.phrase for c in brief.characters]),
        choose=lambda *options: rng.choice(options),
    )
    title, sections = parse_beats(rendered, template)
    middle_count = brief.pages - len(sections["opening"]) - len(sections["closing"])
    if not 0 <= middle_count <= len(sections["middle"]):
        raise StoryError(f"The {theme} story cannot make {brief.pages} pages; choose between 8 and 24.")
    chosen = sorted(rng.sample(range(len(sections["middle"])), middle_count))
    beats = sections["opening"] + [sections["middle"][i] for i in chosen] + sections["closing"]
    pages = [
        DraftPage(text=text, scene=scene, characters=[c.name for c in brief.characters if mentions(scene, c.phrase)])
        for text, scene in beats
    ]
    return StoryDraft(title=title, pages=pages)
