"""Create the offline stand-in for hfl/minirbt-h256: its public architecture, random weights.

    python -m jobs.init_offline_model --config configs/init_offline_model.yaml

Writes a ``save_pretrained`` directory (weights, config, bert-base-chinese tokenizer) that the
training job loads through the same ``from_pretrained`` code as the hub id.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from jobs.common import cli
from jobs.common import config as config_lib

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class InitOfflineModelConfig:
    EXAMPLE_OVERRIDE: ClassVar[str] = "seed=1"  # --help's --set example (a unit test loads it)
    architecture: str = str(REPO_ROOT / "configs/model/minirbt-h256.json")  # a BertConfig JSON
    labels_file: str = "data/corpus/labels.json"  # label names written by prepare_corpus
    output_dir: str = "artifacts/minirbt-h256-random"  # a save_pretrained folder (finetune's model.name_or_path)
    seed: int = 0  # of the random weights


def run(config: InitOfflineModelConfig) -> Path:
    from model.classifier import build_random_classifier, count_parameters, load_classifier

    label_names = json.loads(Path(config.labels_file).read_text(encoding="utf-8"))
    out = build_random_classifier(Path(config.architecture), label_names, Path(config.output_dir), seed=config.seed)
    loaded = load_classifier(str(out))  # prove it loads back through the hub-id code path
    print(f"wrote {out.resolve()}: {count_parameters(loaded.model) / 1e6:.2f}M parameters, "
          f"vocab {loaded.tokenizer.vocab_size}, labels {loaded.label_names}")
    return out


@cli.entry_point("offline model creation")
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(InitOfflineModelConfig, __doc__.splitlines()[0], argv)
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
