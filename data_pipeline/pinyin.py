"""Chinese -> tone-numbered pinyin pairs for the seq2seq model, a per-character baseline, and metrics.

Pair construction (``segment_text`` + ``transliterate``), in order:

1. NFKC-normalise the review (full-width ``ＡＢ１，`` become ``AB1,``; ``…`` becomes ``...``).
2. Cut it into sentences at sentence punctuation (``。！？；…`` and their ASCII forms; an ASCII ``.``
   only when it is not a decimal point) and at whitespace (reviews use spaces as clause breaks).
3. A sentence longer than ``max_chars`` is cut into windows of at most ``max_chars`` characters,
   at clause punctuation (``，,、：:``) where possible, otherwise into balanced hard cuts.
4. Leading/trailing characters that are neither Chinese nor ASCII letters/digits are stripped,
   control/format characters are removed; segments without a Chinese character are dropped.

Target policy: the target has exactly one token per source character (1:1 alignment):
a Chinese character becomes its TONE3 syllable from ``pypinyin.lazy_pinyin`` (phrase dictionary on,
computed on the segment itself, so the target is a function of the source; neutral tone = 5,
``ü`` written ``v``: ``lv4``); every other character (ASCII letters kept with their case, digits,
punctuation such as ``,`` or ``(``) maps to itself. Tokens are joined by single spaces.

Corpus (``build_pairs``): the sentences of several sources (``data_pipeline.pinyin_sources``) are kept
once, by the first source that has them, and split by a hash of the sentence, so no sentence is in two
splits whichever review or article it came from. Each row records its source in a ``corpus`` column.

Baselines: ``ReadingTable`` reads every character with its most frequent reading in train;
``char_by_char_pinyin`` is pypinyin on each character alone, without its phrase dictionary.

Metrics (``score``) are position-wise over the reference: token i is correct when the prediction
has a token at position i and it equals the reference's; a prediction's extra tokens cost nothing
except exact match. "Syllable accuracy" counts only positions whose reference token is a pinyin
syllable (Chinese characters); "token accuracy" counts all positions; "polyphonic accuracy" counts
syllable positions whose source character has more than one reading in the train split; "exact
match" is the share of rows whose whole predicted token sequence equals the reference.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from data_pipeline.pinyin_sources import SourceTexts
from data_pipeline.schema import SEQ2SEQ_SPEC, ColumnSpec, TableSpec

HAN = re.compile(r"[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
SYLLABLE = re.compile(r"^[a-z]+[1-5]$")  # TONE3 with neutral tone 5: zhong1, lv4, n2, de5
# Sentence ends: Chinese and ASCII forms (after NFKC), an ASCII '.' unless between two digits, whitespace.
_SENTENCE_BREAK = re.compile(r"[。！？；!?;…]+|\.{2,}|(?<!\d)\.|\.(?!\d)|\s+")
_CLAUSE_END = re.compile(r"(?<=[，,、：:])")
UNKNOWN = "<unk>"
# What prepare_corpus writes: the seq2seq columns every reader needs, plus the corpus each row came from
# (readers select the columns they use, so the extra one is invisible to training and validation).
PAIRS_SPEC = TableSpec(columns=SEQ2SEQ_SPEC.columns + (ColumnSpec(name="corpus", kind="string"),))


def normalise_source(text: str) -> str:
    """NFKC, then drop whitespace and control/format characters (what the source tokenizer does)."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch)[0] != "C")


def is_chinese(char: str) -> bool:
    return HAN.match(char) is not None


def is_syllable(token: str) -> bool:
    return SYLLABLE.match(token) is not None


def _keep_edge(char: str) -> bool:
    return is_chinese(char) or (char.isascii() and char.isalnum())


def _strip_edges(segment: str) -> str:
    start, end = 0, len(segment)
    while start < end and not _keep_edge(segment[start]):
        start += 1
    while end > start and not _keep_edge(segment[end - 1]):
        end -= 1
    return segment[start:end]


def _balanced_cuts(text: str, max_chars: int) -> list[str]:
    pieces = -(-len(text) // max_chars)
    size = -(-len(text) // pieces)
    return [text[i:i + size] for i in range(0, len(text), size)]


def _windows(sentence: str, max_chars: int) -> list[str]:
    """Pack clauses greedily into windows of at most ``max_chars``; hard-cut over-long clauses."""
    if len(sentence) <= max_chars:
        return [sentence]
    windows: list[str] = []
    current = ""
    for clause in (c for c in _CLAUSE_END.split(sentence) if c):
        if len(current) + len(clause) <= max_chars:
            current += clause
            continue
        if current:
            windows.append(current)
        if len(clause) > max_chars:
            *full, current = _balanced_cuts(clause, max_chars)
            windows.extend(full)
        else:
            current = clause
    if current:
        windows.append(current)
    return windows


def segment_text(text: str, max_chars: int) -> list[str]:
    """Review -> sentences/windows of 1..max_chars characters that contain Chinese (see module doc)."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    text = unicodedata.normalize("NFKC", text)
    segments = []
    for sentence in _SENTENCE_BREAK.split(text):
        sentence = "".join(ch for ch in sentence if unicodedata.category(ch)[0] != "C")
        for window in _windows(_strip_edges(sentence), max_chars):
            window = _strip_edges(window)
            if window and any(is_chinese(ch) for ch in window):
                segments.append(window)
    return segments


@lru_cache(maxsize=None)
def _tone3(marked: str) -> str:
    """A tone-marked syllable (``lǜ``) in TONE3 with neutral tone 5 (``lv4``): what ``Style.TONE3`` gives.

    Asking pypinyin for tone marks and converting each distinct syllable once is faster than asking for
    TONE3, whose per-syllable regex conversion dominates the time: 72 s against 106 s for all 114,414
    sentences of the reviews and the People's Daily (2026-11-27, loaded 2-core machine), same tokens.
    """
    from pypinyin.contrib.tone_convert import to_tone3

    return to_tone3(marked, neutral_tone_with_five=True)


def transliterate(segment: str) -> list[str] | None:
    """One target token per character of ``segment`` (see the module doc); None if pypinyin misaligns."""
    from pypinyin import Style, lazy_pinyin

    marked = lazy_pinyin(segment, style=Style.TONE, errors=list)
    if len(marked) != len(segment):
        return None
    out = []
    for ch, syl in zip(segment, marked):
        syl = _tone3(syl) if is_chinese(ch) else ch
        out.append(syl if is_syllable(syl) else ch)
    return out


# --------------------------------------------------------------------------- corpus


@dataclass
class SourcePairStats:
    """What one source gave: its texts, the sentences cut from them and where those went."""
    texts: int = 0
    segments: int = 0
    duplicates_dropped: int = 0  # the same sentence earlier in this source
    cross_source_dropped: dict[str, int] = field(default_factory=dict)  # earlier source -> sentences it kept
    unaligned_dropped: int = 0  # pypinyin returned a different number of tokens than characters
    rows_per_split: dict[str, int] = field(default_factory=dict)


@dataclass
class PairStats:
    sources: dict[str, SourcePairStats] = field(default_factory=dict)
    rows_per_split: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        total = sum(self.rows_per_split.values())
        out = [f"pinyin pairs: {total} sentences, " + ", ".join(f"{k} {v}" for k, v in self.rows_per_split.items())]
        for name, s in self.sources.items():
            across = ", ".join(f"{n} already in {earlier}" for earlier, n in s.cross_source_dropped.items())
            out.append(f"  {name}: {s.segments} sentences from {s.texts} texts -> "
                       + ", ".join(f"{k} {v}" for k, v in s.rows_per_split.items())
                       + f"; dropped {s.duplicates_dropped} duplicates, {across or '0 already in an earlier source'}, "
                       f"{s.unaligned_dropped} unaligned")
        return out


@dataclass(frozen=True)
class Pair:
    id: str
    source: str
    target: str
    corpus: str = "reviews"  # the source it came from: the benchmark reports per corpus


def _sentence_hash(sentence: str) -> bytes:
    return hashlib.sha1(sentence.encode("utf-8")).digest()


def split_of(digest: bytes, fractions: dict[str, float]) -> str:
    """The split a sentence falls in: its hash as a point in [0, 1), cut at the cumulative fractions."""
    point = int.from_bytes(digest[:8], "big") / 2 ** 64
    cumulative = 0.0
    names = list(fractions)
    for name in names[:-1]:
        cumulative += fractions[name]
        if point < cumulative:
            return name
    return names[-1]


def build_pairs(sources: Sequence[SourceTexts], fractions: dict[str, float], max_chars: int,
                stats: PairStats | None = None) -> dict[str, list[Pair]]:
    """Pairs per split from several sources' texts; ids are ``<corpus>-<text id>-<segment index>``.

    A sentence is kept once, by the first source (in the given order) that has it; later copies are
    counted per source. Each kept sentence goes to the split its hash picks (``split_of``), so no
    sentence is in two splits and reruns give the same split. Rows within a split are in hash order
    (sources interleaved, as a shuffle would). Each distinct sentence is transliterated once.
    """
    stats = stats if stats is not None else PairStats()
    owner: dict[str, str] = {}  # sentence -> the source that kept it
    keyed: dict[str, list[tuple[bytes, Pair]]] = {name: [] for name in fractions}
    for source in sources:
        if source.name in stats.sources:
            raise ValueError(f"two seq2seq sources are named {source.name!r}: names must be unique")
        s = stats.sources[source.name] = SourcePairStats(rows_per_split={name: 0 for name in fractions})
        for text_id, text in zip(source.ids, source.texts):
            s.texts += 1
            for k, segment in enumerate(segment_text(text, max_chars)):
                s.segments += 1
                earlier = owner.get(segment)
                if earlier == source.name:
                    s.duplicates_dropped += 1
                    continue
                if earlier is not None:
                    s.cross_source_dropped[earlier] = s.cross_source_dropped.get(earlier, 0) + 1
                    continue
                owner[segment] = source.name
                target = transliterate(segment)
                if target is None:
                    s.unaligned_dropped += 1
                    continue
                digest = _sentence_hash(segment)
                split = split_of(digest, fractions)
                keyed[split].append((digest, Pair(f"{source.name}-{text_id}-{k}", segment, " ".join(target),
                                                  source.name)))
                s.rows_per_split[split] += 1
    out = {}
    for split, rows in keyed.items():
        out[split] = [pair for _, pair in sorted(rows, key=lambda row: row[0])]
        stats.rows_per_split[split] = len(rows)
    return out


def write_pairs(path: Path, pairs: Sequence[Pair]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [p.id for p in pairs], "source": [p.source for p in pairs],
                      "target": [p.target for p in pairs], "corpus": [p.corpus for p in pairs]},
                     schema=PAIRS_SPEC.arrow_schema())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


# --------------------------------------------------------------------------- baseline and metrics


def aligned_chars(source: str, target_tokens: Sequence[str]) -> list[str] | None:
    """The source characters position-aligned with the target tokens, or None if lengths differ."""
    chars = list(normalise_source(source))
    return chars if len(chars) == len(target_tokens) else None


class ReadingTable:
    """Per-character reading counts from aligned (source, target) pairs: the per-character baseline."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}
        self.unaligned = 0

    @classmethod
    def fit(cls, pairs: Iterable[tuple[str, str]]) -> ReadingTable:
        table = cls()
        for source, target in pairs:
            tokens = target.split()
            chars = aligned_chars(source, tokens)
            if chars is None:
                table.unaligned += 1
                continue
            for char, token in zip(chars, tokens):
                if is_syllable(token):
                    table.counts.setdefault(char, Counter())[token] += 1
        return table

    def most_frequent(self, char: str) -> str | None:
        counts = self.counts.get(char)
        if not counts:
            return None
        return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # ties: alphabetical, deterministic

    def polyphonic(self) -> frozenset[str]:
        """Characters seen with more than one reading."""
        return frozenset(char for char, counts in self.counts.items() if len(counts) > 1)

    def predict(self, source: str) -> list[str]:
        """Most frequent reading per Chinese character (``<unk>`` if unseen); other characters map to themselves."""
        out = []
        for char in normalise_source(source):
            reading = self.most_frequent(char)
            out.append(reading if reading is not None else (UNKNOWN if is_chinese(char) else char))
        return out


@dataclass
class Scores:
    """Additive counts (sum over batches and workers) and the rates derived from them."""
    rows: int = 0
    exact: int = 0
    tokens: int = 0
    tokens_correct: int = 0
    syllables: int = 0
    syllables_correct: int = 0
    polyphonic: int = 0
    polyphonic_correct: int = 0
    unaligned_rows: int = 0  # rows whose source/target lengths differ: no polyphonic positions

    def add(self, other: Scores) -> Scores:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_counts(cls, counts: dict[str, float]) -> Scores:
        return cls(**{name: int(round(float(counts[name]))) for name in cls.__dataclass_fields__})

    def rates(self) -> dict[str, float]:
        ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
        return {"syllable_accuracy": ratio(self.syllables_correct, self.syllables),
                "polyphonic_accuracy": ratio(self.polyphonic_correct, self.polyphonic),
                "token_accuracy": ratio(self.tokens_correct, self.tokens),
                "exact_match": ratio(self.exact, self.rows)}


def score(sources: Sequence[str], references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]],
          polyphonic: frozenset[str] | set[str]) -> Scores:
    """Position-wise scores of predicted token sequences against reference ones (see the module doc)."""
    if not len(sources) == len(references) == len(predictions):
        raise ValueError("sources, references and predictions must have the same length")
    out = Scores()
    for source, ref, pred in zip(sources, references, predictions):
        ref, pred = list(ref), list(pred)
        chars = aligned_chars(source, ref)
        out.rows += 1
        out.exact += int(pred == ref)
        out.unaligned_rows += int(chars is None)
        for i, token in enumerate(ref):
            correct = i < len(pred) and pred[i] == token
            out.tokens += 1
            out.tokens_correct += correct
            if not is_syllable(token):
                continue
            out.syllables += 1
            out.syllables_correct += correct
            if chars is not None and chars[i] in polyphonic:
                out.polyphonic += 1
                out.polyphonic_correct += correct
    return out


@lru_cache(maxsize=None)
def _reading_alone(char: str) -> str:
    from pypinyin import Style, lazy_pinyin

    syllables = lazy_pinyin(char, style=Style.TONE3, neutral_tone_with_five=True, errors=list)
    return syllables[0] if len(syllables) == 1 and is_syllable(syllables[0]) else UNKNOWN


def char_by_char_pinyin(source: str) -> list[str]:
    """pypinyin without its phrase dictionary: each Chinese character read alone (its default reading).

    Same style as the references (TONE3, neutral tone 5, ``v``); other characters map to themselves.
    """
    return [_reading_alone(char) if is_chinese(char) else char for char in normalise_source(source)]


def baseline_scores(train: Iterable[tuple[str, str]], test: Sequence[tuple[str, str]]) -> tuple[Scores, ReadingTable]:
    """Fit the per-character baseline on ``train`` pairs and score it on ``test`` pairs."""
    table = ReadingTable.fit(train)
    sources = [s for s, _ in test]
    references = [t.split() for _, t in test]
    return score(sources, references, [table.predict(s) for s in sources], table.polyphonic()), table
