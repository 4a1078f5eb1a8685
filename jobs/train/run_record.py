"""What a training run records about itself in MLflow besides its curves: the registered version's tags
(data digests, headline test metrics, the baselines), the run's description (markdown) and the
registered version's model card."""

from __future__ import annotations

import re

from jobs.common.datasets import DatasetSummary
from jobs.common.tracking import metrics_table
from jobs.train.task import TrainingPlan


def headline_metrics(plan: TrainingPlan, metrics: dict[str, float]) -> dict[str, float]:
    """The final model's test metrics the job's task calls headline (loss aside)."""
    names = [m for m in plan.task.headline_metrics if m != "loss"]
    return {f"test_{m}": metrics[f"test_{m}"] for m in names if f"test_{m}" in metrics}


_BASELINE_KEY = re.compile(r"baseline_(?P<name>.+?)_test_(?P<metric>.+)$")


def baselines_by_name(baselines: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"char_ngram": {"accuracy": ...}}`` from the flat ``baseline_<name>_test_<metric>`` metrics."""
    out: dict[str, dict[str, float]] = {}
    for key, value in baselines.items():
        match = _BASELINE_KEY.match(key)
        if match:
            out.setdefault(match["name"], {})[match["metric"]] = value
    return out


def version_tags(datasets: list[tuple[DatasetSummary, str]], headline: dict[str, float],
                 baselines: dict[str, float]) -> dict[str, str]:
    """A registered version's tags: what it was trained and measured on, how it scored, against what bars."""
    return {**{f"data_digest_{context}": summary.digest for summary, context in datasets},
            **{key: f"{value:.6g}" for key, value in {**headline, **baselines}.items()}}


def training_description(plan: TrainingPlan, run_name: str, metrics: dict[str, float],
                         datasets: list[tuple[DatasetSummary, str]]) -> str:
    """The run's description (markdown): what was trained on what, and the test split beside the baselines.

    ``registration_line`` is appended once the model is registered (it may be later, by another process).
    """
    from jobs.common.baselines import BASELINES

    titles = {**BASELINES, "char": "per-character reading"}
    columns = [m for m in plan.task.headline_metrics if m != "loss"]
    rows = {"**model (this run)**": {m: metrics[f"test_{m}"] for m in columns if f"test_{m}" in metrics}}
    for name, values in baselines_by_name(plan.baselines).items():
        rows[f"baseline: {titles.get(name, name)}"] = values
    lines = [f"**{plan.job}** run `{run_name}`: trained {int(metrics.get('epoch', -1)) + 1} epoch(s), "
             f"{int(metrics.get('step', 0))} optimiser steps.", "",
             "Data: " + "; ".join(f"{context} `{summary.source}` ({summary.num_rows or 0:,} rows, digest "
                                  f"`{summary.digest}`)" for summary, context in datasets), "",
             "Test split, same run:", "", metrics_table(rows, columns), ""]
    return "\n".join(lines)


def registration_line(registered) -> str:
    """The description's last line: where the trained model went."""
    if registered.name:
        return (f"Registered as `{registered.name}` version {registered.version}"
                + (f" (alias `@{registered.alias}`)." if registered.alias else "."))
    return f"Logged model: `{registered.model_uri}` (not registered)."


# What each training job's models are, for the registry's descriptions (a job without an entry gets none).
_WHAT_IT_IS = {
    "finetune_classifier": "A text classifier: a pretrained encoder (`{source}`) fine-tuned to predict one of "
                           "{n_labels} labels ({labels}) for a text, with each label's probability.",
    "train_seq2seq": "An encoder-decoder Transformer trained from scratch here that maps a source sequence to "
                     "a target sequence (greedy or beam decoding, KV cache).",
}
SCORE_COMMAND = ("python -m jobs.batch_infer --config configs/batch_infer.local-cpu.yaml "
                 "--set model=models:/{name}/{version} --set input=PATH")


def what_it_is(plan: TrainingPlan) -> str:
    """One paragraph on what the job's models are: the registered model's description."""
    template = _WHAT_IT_IS.get(plan.job)
    if template is None:
        return ""
    labels = plan.dicts.get("labels.json", {}).get("label_names", [])
    return template.format(source=plan.tags.get("model_source", "?"), n_labels=len(labels),
                           labels=", ".join(f"`{name}`" for name in labels) or "none")


def model_card(intro: str, run_description: str, run_id: str, checkpoint: str, registered) -> str:
    """A registered version's description: what it is, its data and test metrics beside the baselines of
    the same split (the run's description), where it came from, and the command that scores with it."""
    score = SCORE_COMMAND.format(name=registered.name, version=registered.version)
    return "\n".join([intro, "", run_description.strip(), "",
                      f"From MLflow run `{run_id}`, checkpoint `{checkpoint}`.", "",
                      "Score a Parquet file with this version (docs/jobs.md):", "", f"    {score}", ""]).strip()
