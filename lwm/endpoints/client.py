"""An OpenAI-compatible chat endpoint with retries, backoff and timeouts, and a thread pool
that runs many requests at once. Used for the model under test, the judge, the SFT teacher and
WorldModelEnv."""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Iterable, TypeVar

log = logging.getLogger("lwm.endpoints")
T = TypeVar("T")
R = TypeVar("R")


class EndpointError(RuntimeError):
    pass


class ChatClient:
    def __init__(self, ecfg):
        from openai import OpenAI
        if not ecfg.base_url:
            raise ValueError("an endpoint needs base_url (e.g. http://127.0.0.1:8000/v1)")
        self.cfg = ecfg
        # Retries are ours (backoff with jitter, counted per request), not the client's.
        self.client = OpenAI(base_url=ecfg.base_url, api_key=os.environ.get(ecfg.api_key_env) or "EMPTY",
                             timeout=ecfg.timeout_s, max_retries=0)

    def complete(self, messages: list[dict], temperature: float | None = None,
                 max_tokens: int | None = None, seed: int | None = None) -> str:
        """The reply's text; raises EndpointError after max_retries failed attempts."""
        extra = {"seed": seed} if seed is not None else {}
        resp = self._retried(lambda: self.client.chat.completions.create(
            model=self.cfg.model or "default", messages=messages,
            temperature=self.cfg.temperature if temperature is None else temperature,
            max_tokens=max_tokens or self.cfg.max_tokens, **extra))
        return resp.choices[0].message.content or ""

    def models(self) -> list[dict]:
        """GET /v1/models: every entry as the server wrote it (extra fields included, such as
        the checkpoint fingerprint `lwm serve` reports); raises EndpointError like complete."""
        return self._retried(lambda: [m.model_dump() for m in self.client.models.list().data])

    def _retried(self, call):
        last = None
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return call()
            except Exception as e:  # connection errors, timeouts, 5xx, rate limits alike
                last = e
                if attempt < self.cfg.max_retries:
                    delay = min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random())
                    log.warning("endpoint %s: %s; retry %d in %.1fs", self.cfg.base_url,
                                type(e).__name__, attempt + 1, delay)
                    time.sleep(delay)
        raise EndpointError(f"{self.cfg.base_url}: {self.cfg.max_retries + 1} attempts failed: {last}") \
            from last


# What a /v1/models entry says about the model behind it; not `created`, which a restart of the
# same model changes.
REPORTED = ("id", "root", "parent", "checkpoint_fingerprint")


def served_model(ecfg) -> dict:
    """What the endpoint says it serves for ecfg.model (GET /v1/models): the entry's id and root,
    and the checkpoint fingerprint `lwm serve` adds. With one model listed, that one, whatever
    name the requests use. Raises EndpointError when the endpoint does not say, ValueError when
    it lists other models only."""
    entries = ChatClient(ecfg).models()
    match = [e for e in entries if ecfg.model and e.get("id") == ecfg.model]
    if not match and len(entries) == 1:
        match = entries
    if not match:
        ids = ", ".join(str(e.get("id")) for e in entries) or "none"
        raise ValueError(f"model '{ecfg.model}' is not one of the models {ecfg.base_url} serves ({ids})")
    return {k: match[0][k] for k in REPORTED if match[0].get(k) is not None}


def endpoint_identity(ecfg, **settings) -> dict:
    """What decides an endpoint's answers: its URL, the model it reports and the generation
    settings. An endpoint that does not report its model is known by the configured name only
    (a change of model behind it then goes unnoticed: logged)."""
    try:
        served = served_model(ecfg)
    except EndpointError as e:
        log.warning("%s did not say which model it serves (GET /models: %s); its answers are kept "
                    "under the configured name '%s' only", ecfg.base_url, e, ecfg.model)
        served = {"unreported": ecfg.model}
    return {"endpoint": ecfg.base_url.rstrip("/"), "requested": ecfg.model, "served": served, **settings}


def run_concurrent(fn: Callable[[T], R], items: Iterable[T], concurrency: int,
                   on_result: Callable[[T, R], None]) -> None:
    """fn over items with `concurrency` threads; on_result runs in the caller's thread as each
    finishes, so writing results there needs no lock."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(fn, it): it for it in items}
        for fut in as_completed(futures):
            on_result(futures[fut], fut.result())
