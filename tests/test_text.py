"""Plain text, one rule: controls, escape sequences, bidi overrides and other invisible characters are refused in what
a person types, removed from what a writer returns, and escaped where storybook prints text it did not check."""

import pytest

from storybook.text import hidden_characters, plain, shown, without_hidden

HOSTILE = [
    "\x1b[31mred\x1b[0m",  # an ANSI colour
    "\x1b]0;pwned\x07",  # a terminal title, ended by the bell
    "evil\u202etxt.exe",  # right-to-left override
    "a\u2066b\u2069",  # bidi isolates
    "zero\u200bwidth",  # zero-width space
    "back\bspace\rreturn",  # cursor moves
    "line\u2028separator",
    "private\ue000use",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_every_hidden_character_is_refused_by_name_removed_or_escaped(text):
    with pytest.raises(ValueError, match=r"control or invisible characters \(U\+"):
        plain(text)
    assert hidden_characters(without_hidden(text)) == []
    assert hidden_characters(shown(text)) == [] and shown(text) != text


def test_line_breaks_are_text_where_a_text_may_hold_lines_and_letters_of_every_script_are_kept():
    assert plain("For Mia,\nwith love", lines=True) == "For Mia,\nwith love"
    with pytest.raises(ValueError, match="U\\+000A"):
        plain("one\ntwo")  # a title is one line
    assert without_hidden("Mia\tand\r\nRex", lines=True) == "Miaand\nRex"
    family, persian = "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\u0645\u06cc\u200c\u0631\u0648\u062f"  # ZWJ, ZWNJ
    for words in ("Zoë's café", "ミアの本", "ليلى", "Мия и Рекс", "mia 🦕", f"our {family}", persian):
        assert plain(words) == without_hidden(words) == shown(words) == words


def test_shown_escapes_what_would_reach_the_terminal_and_keeps_line_breaks():
    assert shown("a\x1b[31mb\u202ec\nd") == "a\\x1b[31mb\\u202ec\nd"
