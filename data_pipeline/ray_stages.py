"""Ray Data stages the jobs share: read validated Parquet, tokenize in a streaming stage."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from data_pipeline.paths import ParquetFiles
from data_pipeline.schema import label_names_from_schema
from data_pipeline.tokenization import tokenize_texts, tokenizer_json


@dataclass(frozen=True, kw_only=True)
class StageResources:
    """The CPUs and parallelism of the Ray Data read and tokenize stages."""
    read_cpus: float = 0.25  # per read task
    tokenize_cpus: float = 0.25  # per tokenizer actor
    tokenize_concurrency: int = 1  # concurrent tokenize tasks
    tokenize_batch_rows: int = 1024  # rows per tokenize call
    min_blocks: int = 4  # small files are read as one block; split them so stages overlap
    # Read each file inside the tokenize tasks (Ray Data fuses ReadParquet into the tokenize stage): no read tasks
    # beside them, so no worker processes beyond tokenize_concurrency, which Ray starts cold (Python, the tokenizer)
    # and trims to one per free CPU once idle, in every execution again. One block per file, so the first rows wait
    # for a whole file to be tokenized and min_blocks does not apply: for throughput over many files.
    read_in_tokenize_tasks: bool = False


def read_parquet(files: ParquetFiles, columns: list[str] | None, resources: StageResources):
    import ray.data

    # Ray 2.60's default Parquet reader (DataSourceV2) lists files in a task that needs one whole
    # CPU; with training workers and a tokenizer actor holding fractions of a 2-CPU node it never
    # gets scheduled and the job hangs. The V1 reader honours num_cpus for all of its tasks.
    context = ray.data.DataContext.get_current()
    previous, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(files.uris() if files.uri_prefix else list(files.paths),
                                     filesystem=files.filesystem, columns=columns, **read_options(files, resources))
    finally:
        context.use_datasource_v2 = previous


def read_options(files: ParquetFiles, resources: StageResources) -> dict:
    """Ray Data fuses a read into the next map only with the same CPUs and task cap, and no block split."""
    if resources.read_in_tokenize_tasks:
        return {"num_cpus": resources.tokenize_cpus, "concurrency": resources.tokenize_concurrency,
                "override_num_blocks": len(files.paths)}
    return {"num_cpus": resources.read_cpus, "override_num_blocks": resources.min_blocks}


def tokenized(dataset, tokenizer_path: str, text_column: str, max_length: int, keep_columns: list[str],
              resources: StageResources, pair_column: str | None = None):
    import ray.data

    fused = resources.read_in_tokenize_tasks
    # Ray Data (2.60) fuses no read into a map_batches that asks for a batch size (a read may change the row
    # count): the fused stage takes whole blocks and cuts them into tokenizer calls itself.
    return dataset.map_batches(
        tokenize_texts, fn_kwargs={"tokenizer_path": tokenizer_path, "text_column": text_column,
                                   "max_length": max_length, "keep_columns": keep_columns,
                                   "pair_column": pair_column, "serialized": tokenizer_json(tokenizer_path),
                                   "batch_rows": resources.tokenize_batch_rows if fused else None},
        batch_format="pyarrow", batch_size=None if fused else resources.tokenize_batch_rows,
        compute=ray.data.TaskPoolStrategy(size=resources.tokenize_concurrency), num_cpus=resources.tokenize_cpus)


def label_names_of(files: ParquetFiles) -> list[str] | None:
    with files.filesystem.open_input_file(files.paths[0]) as handle:
        return label_names_from_schema(pq.read_schema(handle))
