"""Plain text: one rule for the words a person or a writer gives storybook, which it saves, prints and draws from.

A character is hidden when it is of Unicode class C (controls such as ESC, the bell and the carriage return; format
characters such as bidi overrides and zero-width spaces; private-use, surrogate and unassigned code points) or a line or
paragraph separator (U+2028, U+2029): in a terminal they recolour, move or reorder what follows, and in a book they
print as nothing or as boxes. A line break (\\n) is text where a text may hold lines (a page's text, a dedication).
The zero-width joiner and non-joiner are text too: emoji sequences (a family) and Persian, Arabic and Indic
words are written with them, and they cannot reorder or recolour anything.

What a person types with a hidden character is refused (`plain`); what a writer (an LLM) returns has them removed
(`without_hidden`); text storybook prints without having checked it (an error naming a file) shows them escaped
(`shown`).
"""

import unicodedata

SEPARATORS = "\u2028\u2029"  # line and paragraph separators (Unicode Zl, Zp)
JOINERS = "\u200c\u200d"  # zero-width non-joiner and joiner: format characters that words and emoji are made with


def is_hidden(character: str, lines: bool = False) -> bool:
    """Whether `character` is hidden (see the module); a line break is not where `lines`."""
    if (lines and character == "\n") or character in JOINERS:
        return False
    return unicodedata.category(character)[0] == "C" or character in SEPARATORS


def hidden_characters(text: str, lines: bool = False) -> list[str]:
    """The hidden characters of `text`, each once in order of appearance, as code points ('U+001B')."""
    return list(dict.fromkeys(f"U+{ord(c):04X}" for c in text if is_hidden(c, lines)))


def plain(text: str, lines: bool = False) -> str:
    """`text` when it holds no hidden character (a line break is allowed where `lines`); raises ValueError naming
    them otherwise (the type of every text a person gives)."""
    if found := hidden_characters(text, lines):
        raise ValueError(f"holds control or invisible characters ({', '.join(found[:5])}); use plain text")
    return text


def without_hidden(text: str, lines: bool = False) -> str:
    """`text` with its hidden characters removed (a line break kept where `lines`): what a writer returns."""
    return "".join(c for c in text if not is_hidden(c, lines))


def shown(text: str) -> str:
    """`text` to print in a terminal: each hidden character but the line break as its escape ('\\x1b', '\\u202e')."""
    return "".join(c.encode("unicode_escape").decode("ascii") if is_hidden(c, True) else c for c in text)


def plain_lines(text: str) -> str:
    """`text` when it holds no hidden character but line breaks; raises ValueError naming them otherwise."""
    return plain(text, lines=True)
