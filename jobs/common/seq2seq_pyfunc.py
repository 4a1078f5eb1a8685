"""The MLflow pyfunc wrapper of a seq2seq export (``model/seq2seq_io.py`` directory).

``predict(DataFrame with a 'source' column | list of str) -> DataFrame(target)``: each source text
decoded into its target text (pinyin syllables separated by spaces). Optional params:
``beam_size`` (1 = greedy, the default) and ``max_len`` (generated tokens; default the model's).
Sources are cut to the model's ``max_len`` tokens, and first to ``max_chars(max_len)`` characters
(``data_pipeline.text_limits``), so a multi-megabyte input costs what a long sentence costs.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from jobs.common.registry import MODEL_ARTIFACT

SOURCE_COLUMN = "source"
EXAMPLE_SOURCES = ["银行行长还没来", "这本书还行"]


def source_texts(model_input) -> list[str]:
    """A DataFrame's 'source' (else 'text', else only) column, a Series, or a list of strings."""
    if isinstance(model_input, pd.DataFrame):
        for column in (SOURCE_COLUMN, "text"):
            if column in model_input.columns:
                return [str(t) for t in model_input[column]]
        if len(model_input.columns) == 1:
            return [str(t) for t in model_input.iloc[:, 0]]
        raise ValueError(f"input needs a '{SOURCE_COLUMN}' column (got {list(model_input.columns)})")
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


class TransliterationModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from model.seq2seq_io import load_seq2seq

        self.loaded = load_seq2seq(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from data_pipeline.text_limits import cut_texts, max_chars
        from model.seq2seq_io import generate

        params = params or {}
        max_len = params.get("max_len")
        texts, _ = cut_texts(source_texts(model_input), max_chars(self.loaded.config.max_len))
        targets = generate(self.loaded, texts, beam_size=int(params.get("beam_size", 1) or 1),
                           max_len=int(max_len) if max_len else None)
        return pd.DataFrame({"target": targets})


def input_example() -> tuple[pd.DataFrame, dict[str, int]]:
    """Example input and params: MLflow infers the signature (params schema included) from it."""
    return pd.DataFrame({SOURCE_COLUMN: EXAMPLE_SOURCES}), {"beam_size": 1, "max_len": 0}
