"""Callable predictor classes for Ray Data ``map_batches``: the model is loaded once per actor.

``__call__(batch) -> batch`` reads no globals; concurrency, batch size and GPUs come from the
job config. Rows are scored in length-sorted chunks so each forward pass pads little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.tokenization import pad_batch
from jobs.model_registry import ResolvedModel, materialize_model


@dataclass(frozen=True, kw_only=True)
class PredictorSettings:
    concurrency: int = 2  # predictor actors
    num_cpus: float = 0.5  # per actor; fractions leave room for read and tokenize stages
    num_gpus: float = 0.0  # per actor, e.g. 1 (or 0.5 to pack two actors on a GPU)
    rows_per_call: int = 512  # rows handed to one actor call
    forward_batch_size: int = 64  # rows per forward pass, grouped by length
    precision: str = "fp32"  # fp16/bf16 on GPU
    torch_threads: int = 1


class ClassifierPredictor:
    def __init__(self, resolved: ResolvedModel, tracking_uri: str | None, settings: PredictorSettings):
        from model.classifier import load_classifier

        torch.set_num_threads(settings.torch_threads)
        self.device = torch.device("cuda" if settings.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        loaded = load_classifier(str(materialize_model(resolved, tracking_uri)))
        self.model = loaded.model.eval().to(self.device)
        if self.device.type == "cuda" and settings.precision in ("fp16", "bf16"):
            self.model = self.model.to(torch.float16 if settings.precision == "fp16" else torch.bfloat16)
        self.label_names = np.array(loaded.label_names, dtype=object)
        self.pad_id = loaded.tokenizer.pad_token_id
        self.forward_batch_size = settings.forward_batch_size
        self.lineage = {"model_name": resolved.name, "model_version": resolved.version,
                        "model_run_id": resolved.run_id}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from model.classifier import class_probabilities

        n = len(batch["input_ids"])
        order = np.argsort(batch["num_tokens"], kind="stable")  # similar lengths share a forward pass
        labels = np.empty(n, dtype=np.int64)
        probs = np.empty(n, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, self.forward_batch_size):
                rows = order[start:start + self.forward_batch_size]
                padded = pad_batch({"input_ids": batch["input_ids"][rows]}, self.pad_id, label_column=None)
                p = class_probabilities(self.model, padded["input_ids"].to(self.device),
                                        padded["attention_mask"].to(self.device))
                best = p.max(dim=-1)
                labels[rows] = best.indices.cpu().numpy()
                probs[rows] = best.values.cpu().numpy()
        out = {"id": batch["id"], "label": labels, "label_name": self.label_names[labels], "probability": probs,
               "truncated": batch["truncated"]}
        for key, value in self.lineage.items():
            out[key] = np.full(n, value, dtype=object)
        return out
