"""The training logs' writers under their earlier module name; ``training_log`` is the module."""

from posewarper_jax.training_log import MetricWriter, Progress, close_metric_writers

__all__ = ["MetricWriter", "Progress", "close_metric_writers"]
