"""How StageResources turns into Ray Data's read options (the fusion: tests/integration/test_tokenize_stage.py)."""

from __future__ import annotations

import pyarrow.fs as pafs

from data_pipeline.paths import ParquetFiles
from data_pipeline.ray_stages import StageResources, read_options

FILES = ParquetFiles(pafs.LocalFileSystem(), ("a.parquet", "b.parquet", "c.parquet"), "")


def test_by_default_the_read_runs_in_its_own_tasks_split_into_min_blocks():
    resources = StageResources(read_cpus=0.25, tokenize_cpus=0.5, tokenize_concurrency=2, min_blocks=8)
    assert read_options(FILES, resources) == {"num_cpus": 0.25, "override_num_blocks": 8}


def test_read_in_tokenize_tasks_reads_with_the_tokenize_stage_cpus_and_cap_one_block_per_file():
    # Ray Data fuses the read into the next map only with equal CPUs and task cap and no split of a file.
    resources = StageResources(read_cpus=0.25, tokenize_cpus=0.5, tokenize_concurrency=2, min_blocks=8,
                               read_in_tokenize_tasks=True)
    assert read_options(FILES, resources) == {"num_cpus": 0.5, "concurrency": 2, "override_num_blocks": 3}
