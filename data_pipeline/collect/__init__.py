"""Terminal trajectory collection: `collect(cfg, out_dir)` runs a policy in sandboxed tmux shells."""

from data_pipeline.collect.runner import collect

__all__ = ["collect"]
