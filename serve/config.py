"""Typed settings of `lwm serve`, composed into the main config as `serve`."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf


@dataclass
class ServeConfig:
    checkpoint: str = ""           # empty = the run's latest trained stage
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"          # auto (vLLM when installed, else hf) | vllm | hf
    model_name: str = ""           # the id clients send; empty = the checkpoint folder's name
    domain: str = ""               # system prompt for requests that bring none; empty = none added
    max_new_tokens: int = 1024     # when a request sets no max_tokens
    max_batch: int = 8             # hf backend: requests generated together


def serve_options(cfg: DictConfig) -> DictConfig:
    given = cfg.serve if "serve" in cfg else {}
    return OmegaConf.merge(OmegaConf.structured(ServeConfig), given)
