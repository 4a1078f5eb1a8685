"""How Ray Train shards the datasets: training rows equally, evaluation rows without dropping any."""

from __future__ import annotations

import ray.train


class EvalShardingDataConfig(ray.train.DataConfig):
    """Shards training data equally and evaluation data without dropping rows.

    ``streaming_split(equal=True)`` (Ray's default) may drop up to world_size-1 rows so every
    worker runs the same number of steps: right for training, wrong for metrics.
    """

    def __init__(self, eval_splits: list[str], deterministic_train: bool = False):
        super().__init__()
        self.eval_splits = list(eval_splits)
        self.deterministic_train = deterministic_train

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        train = {k: v for k, v in datasets.items() if k not in self.eval_splits}
        if self.deterministic_train:
            # Materialise, then split in block order: the same rows reach the same rank every run. Materialised
            # first: split(equal=True) would count the rows by running the read and tokenize stages once more,
            # through a count task asking a whole CPU that the job's CPU budget does not hold.
            output = [{} for _ in range(world_size)]
            for name, ds in train.items():
                ds.context.execution_options.preserve_order = True
                for rank, split in enumerate(ds.materialize().split(world_size, equal=True)):
                    output[rank][name] = split.iterator()
        else:
            output = super().configure(train, world_size, worker_handles, worker_node_ids, **kwargs)
        for name in self.eval_splits:
            if name not in datasets:
                continue
            ds = datasets[name].copy(datasets[name])
            ds.context.execution_options = self._resolve_execution_options(name)
            for rank, split in enumerate(ds.streaming_split(world_size, equal=False)):
                output[rank][name] = split
        return output
