"""The scoring pipeline's settings, shared by every job that scores text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_pipeline.quarantine import InputColumns, ReadSettings
from data_pipeline.ray_stages import StageResources
from data_pipeline.storage import StorageRetry
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
class ScoringSettings(PipelineSettings):
    """A Parquet input's columns beside the pipeline's knobs (``batch_infer``, ``score_partitions``)."""
    text_column: str = "text"  # the input's text column
    # A second text per row (e.g. a body beside a title), encoded as a BERT sentence pair
    # [CLS] text [SEP] pair [SEP]; truncation keeps the start of each. Classifiers only.
    text_pair_column: str | None = None
    id_column: str | None = "id"  # written as `id` in the output; None: ids derived from the content

    @property
    def input_columns(self) -> InputColumns:
        return InputColumns(text=self.text_column, id=self.id_column, pair=self.text_pair_column)
