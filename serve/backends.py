"""Text generation behind `lwm serve` (and WorldModelEnv's local_generator): a local
transformers model or vLLM. Each is a callable taking a list of lwm.endpoints.generate.Request."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from lwm.endpoints.generate import Request, generate


class HFBackend:
    """transformers generate; requests arriving together are batched (same sampling settings)."""

    def __init__(self, model, tok):
        self.model, self.tok = model.eval(), tok
        self.lock = threading.Lock()  # one generate at a time: the model is not re-entrant

    @classmethod
    def load(cls, checkpoint: str | Path, mcfg=None, dtype: str = "float32") -> "HFBackend":
        from lwm.models.hf import load_model
        from lwm.tokenizer import load_tokenizer
        model = load_model(checkpoint, mcfg, dtype)
        if torch.cuda.is_available():
            model = model.cuda()
        return cls(model, load_tokenizer(checkpoint))

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def __call__(self, requests: list[Request]) -> list[str]:
        from lwm.tokenizer import encode_prompt
        r0 = requests[0]
        prompts = [encode_prompt(self.tok, r.messages) for r in requests]
        with self.lock:
            if r0.seed is not None:
                torch.manual_seed(r0.seed)
            return generate(self.model, self.tok, prompts, max(r.max_tokens for r in requests),
                            r0.temperature)


class VllmBackend:
    """vLLM's offline engine (continuous batching inside); only where vLLM is installed."""

    def __init__(self, checkpoint: str | Path):
        from vllm import LLM  # noqa: F401  (ImportError tells the caller to fall back)
        self.llm = LLM(model=str(checkpoint), trust_remote_code=False)
        self.tok = self.llm.get_tokenizer()
        self.lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def __call__(self, requests: list[Request]) -> list[str]:
        from vllm import SamplingParams
        params = [SamplingParams(max_tokens=r.max_tokens, temperature=r.temperature, seed=r.seed)
                  for r in requests]
        with self.lock:
            outs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]


def load_backend(kind: str, checkpoint: str | Path, mcfg=None, dtype: str = "float32"):
    if kind in ("auto", "vllm"):
        try:
            return VllmBackend(checkpoint)
        except ImportError:
            if kind == "vllm":
                raise RuntimeError("serve.backend=vllm but vLLM is not installed (pip install vllm)")
    if kind not in ("auto", "hf", "vllm"):
        raise ValueError(f"serve.backend: unknown backend '{kind}' (auto, vllm, hf)")
    return HFBackend.load(checkpoint, mcfg, dtype)
