"""The seq2seq kind: the scratch encoder-decoder Transformer, one decoded text (``generated``) per row."""

from __future__ import annotations

from jobs.evaluation.inputs import read_seq2seq_rows
from jobs.evaluation.results import Seq2SeqResult, polyphonic_characters, seq2seq_baseline, seq2seq_result
from jobs.kinds import KindSpec
from jobs.scoring.predictors import Seq2SeqPredictor
from jobs.scoring.sink import GENERATED_SCHEMA


def check_scoring(settings, columns, model_dir: str) -> str | None:
    # its max_length counts generated tokens, capped at the model's own max_len: nothing to check against positions
    if columns.pair is not None:
        return "input.fields.pair_column: a seq2seq model reads one text per row"
    if settings.predictor.quantize != "none" or settings.predictor.compile or settings.predictor.forward_batch_tokens:
        return ("predictor.quantize, predictor.compile and predictor.forward_batch_tokens apply to classifiers; a "
                "seq2seq model decodes in fp32 (bf16/fp16 on GPU) in forward_batch_size rows")
    return None


def pyfunc() -> tuple:
    from jobs.common.registry import seq2seq_signature
    from jobs.common.seq2seq_pyfunc import TransliterationModel, input_example

    return TransliterationModel(), seq2seq_signature(), input_example()


def read_rows(path: str, settings, names: None):
    return read_seq2seq_rows(path, settings)


def measure(rows, scored, train, names: None) -> tuple[Seq2SeqResult, dict[str, float]]:
    result = seq2seq_result(rows, scored, polyphonic_characters(rows, train))
    return result, (seq2seq_baseline(train, rows, result) if train is not None else {})


def report_lines(m: dict[str, float], result: Seq2SeqResult) -> list[str]:
    nan = float("nan")
    lines = ["scored rows               syllable acc  polyphonic acc  exact match",
             f"  model (greedy)          {m.get('syllable_accuracy', nan):12.4f}  "
             f"{m.get('polyphonic_accuracy', nan):14.4f}  {m.get('exact_match', nan):11.4f}"]
    if "baseline_char_eval_syllable_accuracy" in m:
        lines.append(f"  per-character reading   {m['baseline_char_eval_syllable_accuracy']:12.4f}  "
                     f"{m.get('baseline_char_eval_polyphonic_accuracy', nan):14.4f}  "
                     f"{m['baseline_char_eval_exact_match']:11.4f}")
    return lines


SPEC = KindSpec(
    name="seq2seq", scored_schema=GENERATED_SCHEMA, predictor=Seq2SeqPredictor, check_scoring=check_scoring,
    pyfunc=pyfunc, read_rows=read_rows, measure=measure, headline_metric="syllable_accuracy",
    summary_columns=("syllable_accuracy", "polyphonic_accuracy", "exact_match"),
    baseline_titles={"char": "per-character reading"}, report_lines=report_lines)
