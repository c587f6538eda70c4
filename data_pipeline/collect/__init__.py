"""Trajectory collection: `collect(cfg, out_dir)` runs a policy in each domain's real environment."""

from data_pipeline.collect.runner import collect

__all__ = ["collect"]
