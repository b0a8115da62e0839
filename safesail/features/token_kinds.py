"""What kind of token a feature fires on: content, or one of the kinds that carry no concept.

A feature whose activating tokens are function words, punctuation, digits or format tokens
fires wherever those tokens occur; when it peaks in safety texts of a corpus it is still not a
safety feature (the reference set's rubric, bench/reference/RUBRIC.md). Triage and the
reader-like simulated expert both ask this question, so it is answered once, here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CONTENT = "content"
FUNCTION = "function word"
PUNCTUATION = "punctuation"
DIGIT = "digit"
FORMAT = "format"
"""Whitespace, newlines, markup and code symbols, byte fragments."""

NON_CONTENT = (FUNCTION, PUNCTUATION, DIGIT, FORMAT)

# English function words, contractions and the most frequent auxiliaries and pronouns:
# words that occur in every kind of text, whatever its topic.
FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "it",
        "its",
        "it's",
        "itself",
        "i",
        "me",
        "my",
        "mine",
        "myself",
        "we",
        "us",
        "our",
        "ours",
        "ourselves",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "he",
        "him",
        "his",
        "himself",
        "she",
        "her",
        "hers",
        "herself",
        "they",
        "them",
        "their",
        "theirs",
        "themselves",
        "one",
        "ones",
        "who",
        "whom",
        "whose",
        "which",
        "what",
        "whatever",
        "whoever",
        "when",
        "where",
        "why",
        "how",
        "whether",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "yet",
        "if",
        "then",
        "than",
        "because",
        "as",
        "while",
        "although",
        "though",
        "unless",
        "until",
        "since",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "about",
        "against",
        "between",
        "into",
        "through",
        "during",
        "before",
        "after",
        "above",
        "below",
        "to",
        "from",
        "up",
        "down",
        "out",
        "off",
        "over",
        "under",
        "again",
        "further",
        "once",
        "upon",
        "within",
        "without",
        "along",
        "across",
        "behind",
        "beyond",
        "toward",
        "towards",
        "among",
        "around",
        "near",
        "onto",
        "via",
        "per",
        "is",
        "am",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "have",
        "has",
        "had",
        "having",
        "do",
        "does",
        "did",
        "doing",
        "done",
        "will",
        "would",
        "shall",
        "should",
        "can",
        "could",
        "may",
        "might",
        "must",
        "ought",
        "need",
        "not",
        "no",
        "nor",
        "only",
        "own",
        "same",
        "such",
        "too",
        "very",
        "just",
        "also",
        "even",
        "still",
        "ever",
        "never",
        "always",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "many",
        "much",
        "several",
        "either",
        "neither",
        "s",
        "t",
        "d",
        "ll",
        "m",
        "re",
        "ve",
        "n't",
        "'t",
        "'s",
        "'m",
        "'re",
        "'ve",
        "'d",
        "'ll",
        "don",
        "dont",
        "doesn",
        "didn",
        "isn",
        "aren",
        "wasn",
        "weren",
        "won",
        "wouldn",
        "couldn",
        "shouldn",
        "can't",
        "won't",
        "don't",
        "doesn't",
        "didn't",
        "isn't",
        "aren't",
        "wasn't",
        "weren't",
        "like",
        "get",
        "got",
        "make",
        "made",
        "let",
        "lets",
        "let's",
        "say",
        "said",
        "go",
        "going",
        "gone",
        "come",
        "came",
        "take",
        "took",
        "yes",
        "ok",
        "okay",
        "please",
        "thanks",
        "thank",
        "well",
        "now",
        "really",
        "quite",
        "rather",
        "almost",
        "enough",
    ]
)

_PUNCT = re.compile(r"^[\W_]+$", re.UNICODE)
_DIGITS = re.compile(r"^[\d.,:/\-+%]*\d[\d.,:/\-+%]*$")
_FORMAT = re.compile(r"^(\s+|[<>{}\[\]()|\\/#*=`~^$@&_]+|<\|.*\|>|\ufffd+)$")


def token_class(token: str) -> str:
    """CONTENT or one of NON_CONTENT for one tokenizer piece (leading space ignored)."""
    if not token or not token.strip():
        return FORMAT
    if _FORMAT.match(token) or _FORMAT.match(token.strip()):
        return FORMAT
    word = token.strip().lower()
    if _DIGITS.match(word):
        return DIGIT
    if _PUNCT.match(word):
        return PUNCTUATION
    if word in FUNCTION_WORDS or word.strip("'’") in FUNCTION_WORDS:
        return FUNCTION
    return CONTENT


def _joins(left: str, right: str) -> bool:
    """``right`` continues the word ``left`` ends (no whitespace between, letters or digits on
    both sides of the seam)."""
    return bool(left) and bool(right) and left[-1].isalnum() and right[0].isalnum()


def word_span(tokens: Sequence[str], pos: int) -> tuple[int, int]:
    """[lo, hi) of the tokens that make up the word token ``pos`` belongs to.

    Tokenizers cut words into pieces (" Chat" "GPT", " D" "AN", " al" "ma"); a reader sees the
    word, and only the word can be recognised as a function word, a number or a concept term.
    """
    lo = hi = pos
    while lo > 0 and _joins(tokens[lo - 1], tokens[lo]):
        lo -= 1
    while hi + 1 < len(tokens) and _joins(tokens[hi], tokens[hi + 1]):
        hi += 1
    return lo, hi + 1


def word_at(tokens: Sequence[str], pos: int) -> str:
    """The whole word token ``pos`` belongs to, with the tokenizer's leading space kept."""
    lo, hi = word_span(tokens, pos)
    return "".join(tokens[lo:hi])
