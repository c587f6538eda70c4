"""Typed settings of eval's judge, endpoint and report, composed into EvalConfig.

`eval_options(cfg)` reads them from cfg.eval with these defaults, so eval works the same whether
or not the main config already carries the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint (vLLM, SGLang, `lwm serve`, a hosted API)."""
    base_url: str = ""             # empty = no endpoint
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8           # requests in flight
    max_retries: int = 3           # per request, with exponential backoff
    timeout_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 1024


@dataclass
class JudgeConfig(EndpointConfig):
    prompts: str = ""              # a folder of judge prompt templates; empty = eval/prompts
    baseline: str = ""             # reference mode: predictions.jsonl of the model compared against
    seed: int = 0                  # which side (A/B) holds the model's answer


@dataclass
class EvalOptions:
    mode: str = "rule"             # rule | judge | turing | reference
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)  # the model under test, served
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    plots: bool = True


MODES = ("rule", "judge", "turing", "reference")


def eval_options(cfg: DictConfig) -> DictConfig:
    """EvalOptions filled from cfg.eval where it has the keys (typed: a wrong type fails here)."""
    base = OmegaConf.structured(EvalOptions)
    given = {k: cfg.eval[k] for k in ("mode", "endpoint", "judge", "plots") if k in cfg.eval}
    opts = OmegaConf.merge(base, given)
    if opts.mode not in MODES:
        raise ValueError(f"eval.mode: unknown mode '{opts.mode}' ({', '.join(MODES)})")
    return opts
