"""The scoring pipeline's settings, shared by every job that scores text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_pipeline.quarantine import InputColumns, ReadSettings
from data_pipeline.ray_stages import StageResources
from data_pipeline.readers import TextFields
from data_pipeline.storage import StorageRetry
from jobs.common.inputs import DataInput
from jobs.common.registry import ModelKind
from jobs.kinds import kind_spec
from jobs.scoring.predictors import PredictorSettings


@dataclass(frozen=True, kw_only=True)
class SinkSettings:
    """The Parquet writer of the scored rows."""
    num_cpus: float = 0.25  # per write task; writes run beside the predictor actors
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = "zstd"  # Parquet codec


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """The pipeline's resources and model knobs, declared once: every scoring job's config extends it."""
    max_length: int = 128  # tokens (classifiers) or generated tokens (seq2seq)
    read: ReadSettings = field(default_factory=ReadSettings)
    stages: StageResources = field(default_factory=StageResources)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    # Retries of every read, write and listing of inputs and outputs (503s, resets, stalls); data_pipeline.storage
    storage: StorageRetry = field(default_factory=StorageRetry)

    def tokenize_stage(self, kind: ModelKind) -> bool:
        """A separate tokenizer stage feeds the kinds that have one (classifiers; seq2seq predictors tokenize with
        their own vocabulary), unless ``predictor.tokenize_in_actor``."""
        return kind_spec(kind).tokenize_stage is not None and not self.predictor.tokenize_in_actor

    def cpu_demands(self, kind: ModelKind) -> dict[str, float]:
        stages = self.stages
        tokenize = stages.tokenize_cpus * stages.tokenize_concurrency if self.tokenize_stage(kind) else 0.0
        return {"read": stages.read_cpus, "tokenize": tokenize,
                "predict": self.predictor.num_cpus * self.predictor.concurrency, "write": self.sink.num_cpus}


@dataclass(frozen=True, kw_only=True)
class ScoringInput(DataInput):
    """What a scoring job reads: one text column per row (and a sentence pair's second), the id column."""
    # One text column (text_columns: [name]; several are refused: prepare_corpus joins them) and pair_column
    fields: TextFields = field(default_factory=TextFields)
    id_column: str | None = "id"  # written as `id` in the output; None: ids derived from the content

    def __post_init__(self) -> None:
        if len(self.fields.text_columns) != 1:
            raise ValueError(f"fields.text_columns: a scoring job reads one text column per row, got "
                             f"{list(self.fields.text_columns)} (a second text per row is fields.pair_column; "
                             "prepare_corpus joins several columns into one)")

    @property
    def columns(self) -> InputColumns:
        # A pair column is encoded as a BERT sentence pair [CLS] text [SEP] pair [SEP]; classifiers only
        return InputColumns(text=self.fields.text_columns[0], id=self.id_column, pair=self.fields.pair_column)


# The columns a scoring job read at the top level before they moved into its input section (jobs.common.inputs)
RENAMED_COLUMNS = {"text_column": "input.fields.text_columns", "text_pair_column": "input.fields.pair_column",
                   "id_column": "input.id_column"}
