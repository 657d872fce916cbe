from storybook.identifier import candidate_tokens, choose_token, is_english_word
from storybook.tiny_model import build_tokenizer


def test_token_is_not_a_word_and_has_the_fewest_pieces():
    tokenizer = build_tokenizer()
    token = choose_token(tokenizer, "mia", taken=set())
    assert not is_english_word(token)
    fewest = min(len(tokenizer.tokenize(c)) for c in candidate_tokens("mia") if not is_english_word(c))
    assert len(tokenizer.tokenize(token)) == fewest


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
