"""The ``input`` section every job that reads data spells the same way: where it is and how to read it.

``prepare_corpus``, ``evaluate`` (and ``promote``), ``batch_infer`` and ``score_partitions`` each have an
``input`` section built on ``DataInput``: ``path``, ``format`` (format, encoding, delimiter), ``fields`` (the
text columns, their separator, a sentence pair's second column) and ``id_column``; the labelled inputs add
``label_column`` and the label rules (``LabelledInput``). A job adds only what is its own (prepare_corpus's
given ``splits``, evaluate's ``train_path``, score_partitions' ``partitions`` glob) and sets its own
defaults. The readers behind it are in ``data_pipeline.readers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipeline.readers import FileFormat, LabelCase, LabelRules, TextFields


@dataclass(frozen=True, kw_only=True)
class DataInput:
    """Where the data is and how to read it: the file's format, the text columns, the id column."""
    path: str | None = None  # the file (or folder) to read
    format: FileFormat = field(default_factory=FileFormat)  # format (auto: from the suffix), encoding, delimiter
    fields: TextFields = field(default_factory=TextFields)  # text columns joined by a separator, or a pair
    id_column: str | None = None  # the rows' ids; None: ids are derived from the text


@dataclass(frozen=True, kw_only=True)
class LabelledInput(DataInput):
    """A labelled file: the data input's columns and the one that holds each row's class."""
    label_column: str = "label"  # string or integer labels; floats, NaN and booleans are errors
    max_labels: int = 1000  # more distinct labels is an error (an id column passed as the label...)
    label_strip: bool = True  # "positive " is "positive": surrounding whitespace never makes a class (counted)
    # String labels equal up to case ("positive", "Positive"): error (names them), lower (one class: every
    # label and label names folded to lower case), or keep (distinct classes, deliberately).
    label_case: LabelCase = "error"

    @property
    def label_rules(self) -> LabelRules:
        return LabelRules(strip=self.label_strip, case=self.label_case)
