"""Choosing the rare identifier token that a character's identity is bound to ("a photo of zorv toddler")."""

import hashlib
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONSONANTS = "bdfgklmnprstvwxz"
VOWELS = "aeiou"
CANDIDATES = 400


def is_english_word(text: str) -> bool:
    """True when `text` appears in wordfreq's English word list (any frequency at all)."""
    from wordfreq import zipf_frequency  # 0.4 s to import: only when a token is chosen

    return zipf_frequency(text, "en") > 0


def candidate_tokens(seed_text: str) -> list[str]:
    """Pronounceable 3-4 letter strings (consonant-vowel-consonant[-consonant]), in an order seeded by `seed_text`."""
    rng = random.Random(hashlib.sha256(seed_text.encode()).digest())
    candidates = []
    for _ in range(CANDIDATES):
        letters = [rng.choice(CONSONANTS), rng.choice(VOWELS), rng.choice(CONSONANTS)]
        if rng.random() < 0.5:
            letters.append(rng.choice(CONSONANTS))
        candidates.append("".join(letters))
    return list(dict.fromkeys(candidates))


def choose_token(tokenizer: "PreTrainedTokenizerBase", seed_text: str, taken: set[str], avoid: str = "") -> str:
    """Pick the identifier for a new character: not an English word, not already an entry of the tokenizer's vocabulary
    (Textual Inversion adds it as a token of its own), with as few pieces that are words themselves (`word_pieces`)
    and then as few tokenizer pieces as possible.

    `taken` holds the tokens of the registry's other characters, which the token must neither contain nor occur in
    (added tokens match inside words), and `avoid` text (class noun, name) the token must not occur in. The choice is
    deterministic for `seed_text`.
    """
    vocabulary = tokenizer.get_vocab()
    usable = [
        token
        for token in candidate_tokens(seed_text)
        if not any(token in other or other in token for other in taken)  # 'zor' would also match inside 'zorv'
        and token not in vocabulary
        and token not in avoid.lower()
        and not is_english_word(token)
    ]
    return min(usable, key=lambda token: (len(word_pieces(tokenizer, token)), len(tokenizer.tokenize(token))))


def word_pieces(tokenizer: "PreTrainedTokenizerBase", token: str) -> list[str]:
    """The pieces of `token` that are the tokenizer's own tokens for English words of two letters or more: 'zof' read
    as 'z' + 'of</w>' brings the word 'of' and what it means ("a photo of ...") into every prompt it is in."""
    pieces = [piece for piece in tokenizer.tokenize(token) if piece.endswith("</w>")]
    return [piece for piece in pieces if len(word := piece.removesuffix("</w>")) > 1 and is_english_word(word)]
