"""Fast tests for jobs/common/config.py: strict YAML -> frozen dataclass loading, overrides, flattening."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from jobs.common.config import ConfigError, apply_override, build, example_override, flatten, load, parse_args, to_dict

REPO = Path(__file__).resolve().parents[2]


# A small schema that exercises every kind of field the loader supports.
@dataclass(frozen=True, kw_only=True)
class Optim:
    lr: float = 0.001
    batch_size: int = 32
    schedule: Literal["linear", "cosine"] = "linear"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


@dataclass(frozen=True, kw_only=True)
class Data:
    path: str = "data/train.parquet"
    columns: tuple[str, ...] = ("id", "text")
    label_names: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Job:
    optim: Optim = field(default_factory=Optim)
    data: Data = field(default_factory=Data)
    use_gpu: bool = False
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class NeedsName:
    name: str


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, overrides=()) -> Job:
    return load(Job, write_yaml(tmp_path, text), overrides)


def test_defaults_when_no_file():
    assert load(Job, None) == Job()


def test_yaml_builds_nested_frozen_dataclasses(tmp_path):
    cfg = load_text(tmp_path, """
optim:
  lr: 0.01
  batch_size: 8
  schedule: cosine
data:
  columns: [a, b, c]
use_gpu: true
""")
    assert isinstance(cfg.optim, Optim) and isinstance(cfg.data, Data)
    assert cfg.optim == Optim(lr=0.01, batch_size=8, schedule="cosine")
    assert cfg.data.columns == ("a", "b", "c") and isinstance(cfg.data.columns, tuple)
    assert cfg.data.path == "data/train.parquet"  # untouched defaults stay
    assert cfg.use_gpu is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_empty_file_gives_defaults(tmp_path):
    assert load_text(tmp_path, "# only a comment\n") == Job()


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_text(tmp_path, "- a\n- b\n")


def test_unknown_top_level_key_is_named(tmp_path):
    path = write_yaml(tmp_path, "use_gpu: false\nuse_gpus: true\n")
    with pytest.raises(ConfigError) as info:
        load(Job, path)
    message = str(info.value)
    assert "use_gpus" in message
    assert str(path) in message  # the file is named too
    assert "allowed:" in message and "use_gpu" in message


def test_unknown_nested_key_is_named_with_its_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_text(tmp_path, "optim:\n  lrr: 0.1\n")


def test_unknown_key_in_nested_override_is_named():
    with pytest.raises(ConfigError, match=r"data\.colums"):
        load(Job, None, ["data.colums=[a]"])


@pytest.mark.parametrize("yaml_text, key, expect", [
    ("optim:\n  batch_size: '32'\n", "optim.batch_size", "expected an integer"),  # str for int
    ("optim:\n  batch_size: true\n", "optim.batch_size", "expected an integer"),  # bool for int
    ("optim:\n  batch_size: 3.5\n", "optim.batch_size", "expected an integer"),  # float for int
    ("use_gpu: 1\n", "use_gpu", "expected true/false"),  # int for bool
    ("use_gpu: 'yes'\n", "use_gpu", "expected true/false"),  # str for bool
    ("optim: [1, 2]\n", "optim", "expected a mapping"),  # list for mapping
    ("optim: 3\n", "optim", "expected a mapping"),  # scalar for mapping
    ("optim:\n  lr: fast\n", "optim.lr", "expected a number"),  # str for float
    ("optim:\n  lr: true\n", "optim.lr", "expected a number"),  # bool for float
    ("data:\n  path: 7\n", "data.path", "expected a string"),  # int for str
    ("data:\n  columns: a\n", "data.columns", "expected a list"),  # str for tuple
])
def test_wrong_types_are_errors_naming_the_key(tmp_path, yaml_text, key, expect):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, yaml_text)
    message = str(info.value)
    assert f"{key}:" in message, message
    assert expect in message, message


def test_wrong_item_type_inside_a_tuple_names_the_index(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.columns\[1\]"):
        load_text(tmp_path, "data:\n  columns: [a, 2, c]\n")


def test_int_is_accepted_for_float_and_converted(tmp_path):
    cfg = load_text(tmp_path, "optim:\n  lr: 1\n")
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float


def test_literal_violation_lists_allowed_values(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "optim:\n  schedule: step\n")
    message = str(info.value)
    assert "optim.schedule" in message and "'step'" in message
    assert "linear" in message and "cosine" in message


def test_optional_fields_accept_none_and_their_type_only(tmp_path):
    assert load_text(tmp_path, "optim:\n  max_steps: null\n").optim.max_steps is None
    assert load_text(tmp_path, "optim:\n  max_steps: 5\n").optim.max_steps == 5
    assert load_text(tmp_path, "name: ~\n").name is None
    with pytest.raises(ConfigError, match=r"optim\.max_steps"):
        load_text(tmp_path, "optim:\n  max_steps: many\n")
    labels = load_text(tmp_path, "data:\n  label_names: [neg, pos]\n").data.label_names
    assert labels == ("neg", "pos")
    assert load_text(tmp_path, "data:\n  label_names: null\n").data.label_names is None


def test_exponent_floats_without_a_dot_are_numbers_in_files(tmp_path):
    # PyYAML (YAML 1.1) reads a bare `1e-4` as the string "1e-4"; the loader reads it as YAML 1.2 does.
    assert load_text(tmp_path, "optim:\n  lr: 1e-4\n").optim.lr == pytest.approx(1e-4)
    assert load_text(tmp_path, "optim:\n  lr: 3E+2\n").optim.lr == 300.0
    # A quoted number is still a string, and strings are still not accepted as numbers.
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_text(tmp_path, "optim:\n  lr: '1e-4'\n")


def test_overrides_parse_yaml_values_and_win_over_the_file(tmp_path):
    path = write_yaml(tmp_path, "optim:\n  lr: 0.5\n  batch_size: 4\n")
    cfg = load(Job, path, ["optim.lr=1e-4", "optim.schedule=cosine", "data.columns=[x, y]",
                           "use_gpu=true", "optim.max_steps=null", "name=run-1"])
    assert cfg.optim.lr == 0.0001 and type(cfg.optim.lr) is float
    assert cfg.optim.batch_size == 4  # from the file
    assert cfg.optim.schedule == "cosine"
    assert cfg.data.columns == ("x", "y")
    assert cfg.use_gpu is True
    assert cfg.optim.max_steps is None
    assert cfg.name == "run-1"


def test_override_values_are_type_checked():
    with pytest.raises(ConfigError, match=r"optim\.batch_size: expected an integer"):
        load(Job, None, ["optim.batch_size=many"])


def test_apply_override_builds_missing_sections_and_rejects_bad_syntax():
    data: dict = {}
    apply_override(data, "optim.lr=2e-5")
    apply_override(data, "name=a=b")  # only the first '=' separates key and value
    assert data == {"optim": {"lr": 2e-5}, "name": "a=b"}
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "optim.lr")
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"use_gpu": True}, "use_gpu.x=1")


def test_post_init_value_errors_become_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "optim:\n  batch_size: 0\n")
    message = str(info.value)
    assert "batch_size must be >= 1" in message
    assert "optim" in message


def test_missing_required_field_is_a_config_error():
    with pytest.raises(ConfigError, match="name"):
        build(NeedsName, {})
    assert build(NeedsName, {"name": "x"}).name == "x"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_to_dict_round_trips_through_build():
    cfg = Job(optim=Optim(lr=0.2, max_steps=3), data=Data(columns=("a",), label_names=("n", "p")), name="x")
    assert build(Job, to_dict(cfg)) == cfg


def test_flatten_produces_dotted_string_keys():
    flat = flatten({"optim": {"lr": 0.1, "sched": {"kind": "cos"}}, "name": None, "cols": ("a", "b"), "n": 3})
    assert flat == {"optim.lr": "0.1", "optim.sched.kind": "cos", "name": "", "cols": "('a', 'b')", "n": "3"}
    assert flatten({}) == {}


# ---- the real job configs ---------------------------------------------------------------------

def _job_classes():
    from jobs.scoring.batch import BatchInferConfig
    from jobs.evaluation.runner import EvaluateConfig
    from jobs.train.classifier import FinetuneConfig
    from jobs.init_offline_model import InitOfflineModelConfig
    from jobs.corpus.prepare import PrepareCorpusConfig
    from jobs.scoring.partitions import ScorePartitionsConfig
    from jobs.train.seq2seq import Seq2SeqTrainConfig

    return {"finetune_classifier": FinetuneConfig, "prepare_corpus": PrepareCorpusConfig,
            "train_seq2seq": Seq2SeqTrainConfig, "batch_infer": BatchInferConfig,
            "score_partitions": ScorePartitionsConfig, "evaluate": EvaluateConfig,
            "init_offline_model": InitOfflineModelConfig}


def test_real_configs_build_from_defaults_and_flatten():
    for cls in _job_classes().values():
        cfg = load(cls, None)
        assert cfg == cls()
        flat = flatten(to_dict(cfg))
        assert flat and all(isinstance(v, str) for v in flat.values())
        assert build(cls, to_dict(cfg)) == cfg
    finetune = load(_job_classes()["finetune_classifier"], None, ["optim.lr=3e-4", "scaling.num_workers=1"])
    assert finetune.optim.lr == pytest.approx(3e-4) and finetune.scaling.num_workers == 1
    assert "optim.lr" in flatten(to_dict(finetune)) and "tracking.experiment" in flatten(to_dict(finetune))


def test_real_config_validation_is_reported_as_config_error():
    classes = _job_classes()
    with pytest.raises(ConfigError, match="GPU setting"):
        load(classes["finetune_classifier"], None, ["optim.precision=bf16"])
    with pytest.raises(ConfigError, match="optim.precision"):
        load(classes["finetune_classifier"], None, ["optim.precision=fp8"])
    with pytest.raises(ConfigError, match=r"input.path .one file. or input.splits.train, .val and .test"):
        load(classes["prepare_corpus"], None, ["input.kind=file"])
    with pytest.raises(ConfigError, match="sum to 1"):
        load(classes["prepare_corpus"], None, ["split.train=0.9"])
    cfg = load(classes["prepare_corpus"], None, ["input.label_names=[neg, pos]", "split.limit_per_label=10"])
    assert cfg.input.label_names == ("neg", "pos") and cfg.split.limit_per_label == 10


def _shipped_yaml_configs() -> list[tuple[Path, str]]:
    """YAML files under configs/ named after a job whose config class is known here."""
    found = []
    for path in sorted((REPO / "configs").rglob("*.y*ml")):
        for job in _job_classes():
            if path.stem == job or path.stem.startswith(job + "."):
                found.append((path, job))
    return found


def test_every_shipped_job_config_loads():
    shipped = _shipped_yaml_configs()
    if not shipped:
        pytest.skip("no configs/finetune_classifier*.yaml or configs/prepare_corpus*.yaml yet")
    classes = _job_classes()
    for path, job in shipped:
        cfg = load(classes[job], path)  # raises ConfigError naming the key on any mismatch
        assert isinstance(cfg, classes[job]), path


def test_parse_args_reads_config_and_repeated_overrides(tmp_path):
    cls = _job_classes()["prepare_corpus"]
    path = tmp_path / "p.yaml"
    path.write_text("output_dir: out/x\nlog_to_mlflow: false\n")
    cfg, args = parse_args(cls, "test", ["--config", str(path), "--set", "split.limit_per_label=5",
                                          "--set", "input.label_column=y"])
    assert cfg.output_dir == "out/x" and cfg.log_to_mlflow is False
    assert cfg.split.limit_per_label == 5 and cfg.input.label_column == "y"
    assert args.overrides == ["split.limit_per_label=5", "input.label_column=y"]


def test_parse_args_exits_with_a_message_naming_a_bad_key(capsys):
    cls = _job_classes()["prepare_corpus"]
    with pytest.raises(SystemExit) as info:
        parse_args(cls, "test", ["--set", "split.trian=0.8"])
    assert info.value.code == 2
    assert "split.trian" in capsys.readouterr().err


def test_parse_args_exits_with_a_message_naming_a_bad_type(capsys, tmp_path):
    cls = _job_classes()["finetune_classifier"]
    path = tmp_path / "f.yaml"
    path.write_text("optim:\n  batch_size: big\n")
    with pytest.raises(SystemExit):
        parse_args(cls, "test", ["--config", str(path)])
    err = capsys.readouterr().err
    assert "optim.batch_size" in err and str(path) in err



# ---------------------------------------------------------------- --set values YAML reads otherwise than meant

@pytest.mark.parametrize("assignment, rule, quoted", [
    ("name=*", "`*` starts an alias in YAML", """--set 'name="*"'"""),
    ("name=[a", "`[` starts a YAML list, which must close with ]", """--set 'name="[a"'"""),
    ("name={a", "`{` starts a YAML mapping", """--set 'name="{a"'"""),
    ("name=&a", "`&` starts an anchor in YAML", """--set 'name="&a"'"""),
    ("name=#1", "`#` starts a comment in YAML, so the value would be empty", """--set 'name="#1"'"""),
    ("name=run #2", "` #` starts a comment in YAML, so the value would end before it", """--set 'name="run #2"'"""),
    ("name=@x", "`@` is reserved in YAML", """--set 'name="@x"'"""),
    ("name=|", "`|` starts a block scalar in YAML", """--set 'name="|"'"""),
])
def test_a_value_that_breaks_a_yaml_rule_names_the_key_the_value_the_rule_and_the_quoting(assignment, rule, quoted):
    with pytest.raises(ConfigError) as info:
        load(Job, None, [assignment])
    message = str(info.value)
    assert message.startswith(f"--set {assignment}: ") and rule in message and quoted in message
    assert "Traceback" not in message and "line 1, column" not in message  # not PyYAML's own report


@pytest.mark.parametrize("value, read_as", [("007", "the int 7"), ("yes", "the bool True"),
                                            ("1e3", "the float 1000.0"), ("2024-01-01", "the date")])
def test_a_string_set_to_what_yaml_reads_as_a_number_says_to_quote_it(value, read_as):
    with pytest.raises(ConfigError) as info:
        load(Job, None, [f"name={value}"])
    message = str(info.value)
    assert f"--set name={value}: expected a string, but YAML reads {value} as {read_as}" in message
    assert f"""quote it: --set 'name="{value}"'""" in message
    assert load(Job, None, [f'name="{value}"']).name == value  # the quoting the message gives works


def test_a_string_in_a_file_read_as_a_number_hints_to_quote_it(tmp_path):
    with pytest.raises(ConfigError, match=r"name: expected a string, got 7 \(YAML reads an unquoted 007.*quote"):
        load_text(tmp_path, "name: 007\n")


def test_quoted_and_valid_values_still_parse():
    cfg = load(Job, None, ["name='*'", "optim.lr=1e-4", "data.columns=[id, text]", "name=null"])
    assert cfg.name is None and cfg.optim.lr == 1e-4 and cfg.data.columns == ("id", "text")
    assert load(Job, None, ["name=a=b#c"]).name == "a=b#c"  # `#` inside a plain value is no comment


def test_a_missing_config_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"--config .*nope\.yaml: No such file"):
        load(Job, tmp_path / "nope.yaml")


def test_the_set_help_of_a_config_without_an_example_shows_its_first_key(capsys):
    # The jobs' own examples: tests/unit/test_job_command_line.py.
    assert example_override(Job) == "optim.lr=0.001"
    with pytest.raises(SystemExit):
        parse_args(Job, "test", ["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "--set optim.lr=0.001" in out


def test_a_section_given_in_part_keeps_the_jobs_defaults_for_the_rest():
    """`--set run.storage_path=...` (or a YAML `run:` with one key) must not reset the job's own defaults for
    the section to the section class's: the classifier checkpoints by val_accuracy, not RunSettings' val_loss."""
    from jobs.finetune_classifier import FinetuneConfig

    config = build(FinetuneConfig, {"run": {"storage_path": "s3://b/ray"}, "optim": {"epochs": 1},
                                    "tracking": {"experiment": "mine"}})
    assert config.run.storage_path == "s3://b/ray"
    assert (config.run.checkpoint_metric, config.run.checkpoint_mode) == ("val_accuracy", "max")
    assert config.optim.lr == FinetuneConfig().optim.lr and config.optim.epochs == 1
    assert config.tracking.registered_model == FinetuneConfig().tracking.registered_model == "review-sentiment"


@pytest.mark.parametrize("override, named", [
    ("optim.lr=-1", "lr must be a positive learning rate, got -1"),  # AdamW would refuse it only in the workers
    ("optim.lr=0", "lr must be a positive"),
    ("optim.lr=.inf", "lr must be a positive"),
    ("optim.weight_decay=-0.01", "weight_decay must be >= 0"),
    ("optim.grad_clip=-1", "grad_clip must be >= 0"),
    ("optim.max_steps=0", "max_steps must be >= 1"),
    ("optim.log_every_steps=0", "log_every_steps must be >= 1"),
    ("optim.early_stopping_patience=0", "early_stopping_patience must be >= 1"),
])
def test_a_training_jobs_optimiser_settings_are_refused_as_the_config_loads(override, named):
    from jobs.train.classifier import FinetuneConfig

    with pytest.raises(ConfigError) as info:
        load(FinetuneConfig, None, ["data.train=t.parquet", "data.val=v.parquet", override])
    assert "optim" in str(info.value) and named in str(info.value)
