"""Keys that moved are refused by their old name, with the new one (jobs.common.config's RENAMED_KEYS).

Every job that reads data spells its input the same way (jobs.common.inputs): each old spelling below,
in a YAML file or a --set, is a ConfigError that names the new key, never a silent default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_type_hints

import pytest

from jobs.common.config import ConfigError, build, load
from jobs.corpus.prepare import PrepareCorpusConfig
from jobs.evaluation.promotion import PromoteConfig
from jobs.evaluation.runner import EvaluateConfig
from jobs.scoring.batch import BatchInferConfig
from jobs.scoring.partitions import ScorePartitionsConfig

JOBS = {"prepare_corpus": PrepareCorpusConfig, "evaluate": EvaluateConfig, "promote": PromoteConfig,
        "batch_infer": BatchInferConfig, "score_partitions": ScorePartitionsConfig}

# (job, old key, a value it took, the new key the message names)
OLD_SPELLINGS = [
    ("prepare_corpus", "source.kind", "file", "input.kind"),
    ("prepare_corpus", "source.path", "reviews.csv", "input.path"),
    ("prepare_corpus", "source.train", "train.csv", "input.splits.train"),
    ("prepare_corpus", "source.val", "val.csv", "input.splits.val"),
    ("prepare_corpus", "source.test", "test.csv", "input.splits.test"),
    ("prepare_corpus", "source.format.encoding", "gb18030", "input.format.encoding"),
    ("prepare_corpus", "source.format.delimiter", "';'", "input.format.delimiter"),
    ("prepare_corpus", "source.fields.text_columns", "[title]", "input.fields.text_columns"),
    ("prepare_corpus", "source.fields.separator", "' | '", "input.fields.separator"),
    ("prepare_corpus", "source.fields.pair_column", "body", "input.fields.pair_column"),
    ("prepare_corpus", "source.label_column", "category", "input.label_column"),
    ("prepare_corpus", "source.id_column", "doc_id", "input.id_column"),
    ("prepare_corpus", "source.label_names", "[neg, pos]", "input.label_names"),
    ("prepare_corpus", "source.max_labels", "5", "input.max_labels"),
    ("prepare_corpus", "source.label_strip", "false", "input.label_strip"),
    ("prepare_corpus", "source.label_case", "lower", "input.label_case"),
    ("evaluate", "data", "test.csv", "input.path"),
    ("evaluate", "train_data", "train.csv", "input.train_path"),
    ("promote", "data", "test.csv", "input.path"),
    ("promote", "train_data", "train.csv", "input.train_path"),
    ("batch_infer", "input", "s3://bucket/incoming/", "input.path"),
    ("batch_infer", "input_format.format", "csv", "input.format.format"),
    ("batch_infer", "input_format.encoding", "gb18030", "input.format.encoding"),
    ("batch_infer", "input_format.delimiter", "';'", "input.format.delimiter"),
    ("batch_infer", "text_column", "title", "input.fields.text_columns"),
    ("batch_infer", "text_pair_column", "body", "input.fields.pair_column"),
    ("batch_infer", "id_column", "doc_id", "input.id_column"),
    ("score_partitions", "input_root", "s3://bucket/daily", "input.path"),
    ("score_partitions", "partitions", "'day=*'", "input.partitions"),
    ("score_partitions", "text_column", "title", "input.fields.text_columns"),
    ("score_partitions", "text_pair_column", "body", "input.fields.pair_column"),
    ("score_partitions", "id_column", "doc_id", "input.id_column"),
]


def _yaml(dotted: str, value: str) -> str:
    *sections, name = dotted.split(".")
    return "".join(f"{'  ' * depth}{section}:\n" for depth, section in enumerate(sections)) + \
        f"{'  ' * len(sections)}{name}: {value}\n"


@pytest.mark.parametrize("job, old, value, new", OLD_SPELLINGS)
def test_each_old_spelling_is_refused_with_its_new_name_in_a_file_and_in_a_set(tmp_path: Path, job, old, value, new):
    path = tmp_path / f"{job}.yaml"
    path.write_text(_yaml(old, value), encoding="utf-8")
    with pytest.raises(ConfigError) as in_file:
        load(JOBS[job], path)
    assert str(in_file.value).startswith(f"{path}: `{old}` was renamed to `{new}`"), in_file.value
    with pytest.raises(ConfigError) as in_set:
        load(JOBS[job], None, [f"{old}={value}"])
    assert str(in_set.value).startswith(f"--set: `{old}` was renamed to `{new}`"), in_set.value


def test_one_message_lists_every_old_key_of_the_file_and_of_the_overrides(tmp_path: Path):
    path = tmp_path / "old.yaml"
    path.write_text("input: data/in.csv\ninput_format: {encoding: gbk, delimiter: ';'}\ntext_column: title\n")
    with pytest.raises(ConfigError) as info:
        load(BatchInferConfig, path, ["id_column=doc_id", "text_pair_column=body", "max_length=64"])
    assert str(info.value) == (
        f"{path}: `input` was renamed to `input.path`, `input_format.encoding` was renamed to "
        "`input.format.encoding`, `input_format.delimiter` was renamed to `input.format.delimiter`, "
        "`text_column` was renamed to `input.fields.text_columns`; --set: `id_column` was renamed to "
        "`input.id_column`, `text_pair_column` was renamed to `input.fields.pair_column` "
        "(docs/configuration.md lists every key)")


def test_a_renamed_section_given_whole_names_each_key_below_it():
    with pytest.raises(ConfigError) as info:
        load(PrepareCorpusConfig, None, ["source={kind: file, train: a.csv, fields: {pair_column: body}}"])
    message = str(info.value)
    assert "`source.kind` was renamed to `input.kind`" in message
    assert "`source.train` was renamed to `input.splits.train`" in message  # the longest old key wins
    assert "`source.fields.pair_column` was renamed to `input.fields.pair_column`" in message


def test_the_new_spellings_load(tmp_path: Path):
    config = load(BatchInferConfig, None, ["input.path=in.csv", "input.format.encoding=gbk",
                                           "input.fields.text_columns=[title]", "input.fields.pair_column=body",
                                           "input.id_column=doc_id"])
    assert (config.input.path, config.input.format.encoding, config.input.id_column) == ("in.csv", "gbk", "doc_id")
    assert config.input.columns.names == ["doc_id", "title", "body"]
    # `input` was a path and is now a section: a mapping under it is the new spelling, a string the old one
    assert load(BatchInferConfig, None, ["input={path: x.parquet}"]).input.path == "x.parquet"
    path = tmp_path / "c.yaml"
    path.write_text("input:\n  splits: {train: a.csv, val: b.csv, test: c.csv}\n  kind: file\n")
    assert load(PrepareCorpusConfig, path).input.given_splits == {"train": "a.csv", "val": "b.csv", "test": "c.csv"}
    evaluate = load(EvaluateConfig, None, ["input.path=t.csv", "input.train_path=tr.csv"])
    assert (evaluate.input.path, evaluate.input.train_path) == ("t.csv", "tr.csv")
    assert load(ScorePartitionsConfig, None, ["input.partitions=day=*"]).input.partitions == "day=*"


def test_build_from_a_mapping_refuses_old_keys_too():
    with pytest.raises(ConfigError, match=r"ScorePartitionsConfig: `input_root` was renamed to `input.path`"):
        build(ScorePartitionsConfig, {"input_root": "data/incoming"})


def _resolves(cls: type, dotted: str) -> bool:
    tp = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp) or part not in {f.name for f in dataclasses.fields(tp)}:
            return False
        tp = get_type_hints(tp)[part]
    return True


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_new_key_exists_and_no_old_key_does(job):
    cls = JOBS[job]
    for old, new in cls.RENAMED_KEYS.items():
        assert _resolves(cls, new), f"{job}: {old} -> {new}, which is not a key"
        assert not _resolves(cls, old) or dataclasses.is_dataclass(get_type_hints(cls)[old.split(".")[0]]), old


def test_the_scoring_inputs_refuse_what_they_cannot_read():
    with pytest.raises(ConfigError, match=r"one text column per row, got \['title', 'body'\]"):
        load(BatchInferConfig, None, ["input.fields.text_columns=[title, body]"])
    with pytest.raises(ConfigError, match=r"partitions are read as Parquet, got 'csv'"):
        load(ScorePartitionsConfig, None, ["input.format.format=csv"])
