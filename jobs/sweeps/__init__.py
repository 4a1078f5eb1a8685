"""Hyperparameter sweeps: Ray Tune over a training job, one MLflow child run per trial under the sweep's run."""
