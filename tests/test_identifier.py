from storybook.identifier import candidate_tokens, choose_token, is_english_word, word_pieces
from storybook.tiny_model import build_tokenizer


def test_token_is_not_a_word_and_has_the_fewest_pieces():
    tokenizer = build_tokenizer()
    token = choose_token(tokenizer, "mia", taken=set())
    assert not is_english_word(token)
    plain = [c for c in candidate_tokens("mia") if not is_english_word(c) and not word_pieces(tokenizer, c)]
    assert len(tokenizer.tokenize(token)) == min(len(tokenizer.tokenize(c)) for c in plain)


def test_token_brings_no_word_into_the_prompt():
    # storybook-mini reads 'zof' as 'z' + 'of', and 'of' is the word of its photo captions ("a photo of ..."): Mia's
    # pages came out as plain photo backdrops. A token whose pieces include a word is passed over for one without.
    tokenizer = build_tokenizer()  # its words include 'of', as storybook-mini's do
    assert tokenizer.tokenize("zof") == ["z", "of</w>"] and word_pieces(tokenizer, "zof") == ["of</w>"]
    assert "zof" in candidate_tokens("mia")
    token = choose_token(tokenizer, "mia", taken=set())
    assert word_pieces(tokenizer, token) == [] and len(tokenizer.tokenize(token)) == 2


def test_token_is_deterministic_and_unique_in_the_registry():
    tokenizer = build_tokenizer()
    first = choose_token(tokenizer, "mia", taken=set())
    assert choose_token(tokenizer, "mia", taken=set()) == first
    second = choose_token(tokenizer, "mia", taken={first})
    assert second != first


def test_token_avoids_the_class_noun_and_name():
    tokenizer = build_tokenizer()
    token = choose_token(tokenizer, "x", taken=set())
    assert choose_token(tokenizer, "x", taken=set(), avoid=f"toddler {token}") != token
    assert is_english_word("toddler") and not is_english_word("zqxv")


def test_token_is_no_entry_of_the_vocabulary_and_no_part_of_another_character_s_token():
    tokenizer = build_tokenizer()
    token = choose_token(tokenizer, "mia", taken=set())
    assert token not in tokenizer.get_vocab()  # Textual Inversion adds it as a token of its own
    for taken in ({token[:3]}, {token + "z"}):  # added tokens match inside words: 'zor' would draw inside 'zorv'
        other = choose_token(tokenizer, "mia", taken=taken)
        assert not any(other in t or t in other for t in taken)
