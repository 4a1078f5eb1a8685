"""A character bound applied to texts before they are tokenized, derived from the token limit.

Tokenizers read a text whole and only then truncate it to ``max_length`` tokens: one 5 MB row costs
seconds and hundreds of MB in its tokenize task, and a row that overruns the task's memory fails its
block on every retry. Cutting each text to ``max_chars(max_length)`` characters first bounds that
work at a few kilobytes per row, whatever the input.

Why the cut leaves every text that fits untouched, and keeps the same tokens of a long one:
- A text of at most the bound is not changed at all.
- A text longer than the bound keeps its first ``16 * max_length + 1024`` characters. Every token
  of the tokenizers used here (WordPiece, the character-level seq2seq source, whitespace-split
  pinyin) covers at least one character, and ordinary text averages far fewer than 16 characters a
  token (a CJK character is one token; an English word and its space ~5 characters); the kept
  prefix therefore already yields more than ``max_length`` tokens, the first ``max_length`` of
  them the same as the whole text's (tokenization before the cut does not depend on what follows
  it; only the word the cut lands in can change, and its tokens come last). The 1024 slack
  absorbs runs of whitespace and words tokenized as one ``[UNK]`` (WordPiece turns a word over 100
  characters into a single token).
- Only a text of more than the bound that is mostly whitespace or 100+-character words can still
  have fewer than ``max_length`` tokens; it keeps the tokens of its first ``max_chars`` characters.
Every cut text is flagged ``truncated``.
"""

from __future__ import annotations

from collections.abc import Sequence

CHARS_PER_TOKEN = 16
SLACK_CHARS = 1024


def max_chars(max_tokens: int) -> int:
    """The most characters of one text handed to a tokenizer whose output keeps ``max_tokens`` tokens."""
    return max_tokens * CHARS_PER_TOKEN + SLACK_CHARS


def cut_texts(texts: Sequence[str | None], limit: int) -> tuple[list[str | None], list[bool]]:
    """Each text cut to ``limit`` characters, and whether it was cut (None passes through uncut)."""
    out: list[str | None] = []
    cut: list[bool] = []
    for text in texts:
        long = text is not None and len(text) > limit
        out.append(text[:limit] if long else text)
        cut.append(long)
    return out, cut
