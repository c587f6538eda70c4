"""`lwm serve`: a world-model checkpoint behind an OpenAI-compatible chat endpoint.

POST /v1/chat/completions (non-streaming and streaming), GET /v1/models, GET /health. The model
entry of /v1/models carries `root` (the checkpoint's path) and `checkpoint_fingerprint` (its
content fingerprint, lwm.identity), so a client caching answers per model (eval) notices a
server restarted on another checkpoint under the same URL and name. A request
without a system message gets its domain's world-model system prompt (lwm/domains), built from
the request's extra fields `domain`, `task` and `tools` (or serve.domain), so agents and
Sim-RL loops can send just the turns rendered as lwm/render.py does. The HTTP layer is the
standard library's; generation is vLLM when installed, transformers otherwise, with concurrent
requests gathered into batches.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lwm.domains import get_domain
from lwm.endpoints.generate import Request
from lwm.identity import checkpoint_fingerprint
from lwm.schema import Trajectory
from serve.backends import load_backend

log = logging.getLogger("lwm.serve")


class Batcher:
    """Gathers requests that arrive within `wait_s` of each other (same sampling settings) into
    one backend call, up to max_batch."""

    def __init__(self, backend, max_batch: int = 8, wait_s: float = 0.005):
        self.backend, self.max_batch, self.wait_s = backend, max_batch, wait_s
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="lwm-serve-batcher").start()

    def submit(self, req: Request) -> str:
        fut: Future = Future()
        self.queue.put((req, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            key = (batch[0][0].temperature, batch[0][0].seed)
            deadline = time.monotonic() + self.wait_s
            held = []
            while len(batch) < self.max_batch and time.monotonic() < deadline:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                (batch if (item[0].temperature, item[0].seed) == key else held).append(item)
            for item in held:
                self.queue.put(item)
            try:
                texts = self.backend([r for r, _ in batch])
                for (_, fut), text in zip(batch, texts):
                    fut.set_result(text)
            except Exception as e:  # the error goes back to every waiting request
                for _, fut in batch:
                    fut.set_exception(e)


def with_system_prompt(body: dict, default_domain: str) -> list[dict]:
    messages = list(body["messages"])
    domain = body.get("domain") or default_domain
    if domain and not any(m.get("role") == "system" for m in messages):
        traj = Trajectory(id="serve", domain=domain, source="serve", steps=[],
                          task=body.get("task", ""), tools=body.get("tools") or [])
        messages.insert(0, {"role": "system", "content": get_domain(domain).system_prompt(traj)})
    return messages


class _Handler(BaseHTTPRequestHandler):
    server: "WorldModelServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # the console stays readable; errors are logged below
        log.debug(fmt, *args)

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            entry = {"id": self.server.model_name, "object": "model", "created": 0, "owned_by": "lwm"}
            if self.server.root:
                entry["root"] = self.server.root
            if self.server.fingerprint:
                entry["checkpoint_fingerprint"] = self.server.fingerprint
            self._send(200, {"object": "list", "data": [entry]})
        elif self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self):
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return self._error(404, f"no route {self.path}")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                return self._error(400, "'messages' must be a non-empty list")
            messages = with_system_prompt(body, self.server.default_domain)
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            return self._error(400, str(e))
        req = Request(messages=messages,
                      max_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens")
                                     or self.server.max_new_tokens),
                      temperature=float(body.get("temperature", 0.0) or 0.0), seed=body.get("seed"))
        try:
            text = self.server.batcher.submit(req)
        except Exception as e:
            log.exception("generation failed")
            return self._error(500, f"generation failed: {e}")
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        count = getattr(self.server.backend, "count_tokens", lambda s: 0)
        prompt_tokens = sum(count(m.get("content") or "") for m in messages)
        completion_tokens = count(text)
        if body.get("stream"):
            return self._stream(rid, created, text)
        self._send(200, {
            "id": rid, "object": "chat.completion", "created": created, "model": self.server.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}})

    def _stream(self, rid: str, created: int, text: str) -> None:
        """Server-sent events: the whole text in one delta (generation is not incremental)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {"id": rid, "object": "chat.completion.chunk", "created": created,
                "model": self.server.model_name}
        for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


class WorldModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backend, host: str = "127.0.0.1", port: int = 8000, model_name: str = "lwm",
                 default_domain: str = "", max_new_tokens: int = 1024, max_batch: int = 8,
                 fingerprint: str = "", root: str = ""):
        super().__init__((host, port), _Handler)
        self.backend, self.model_name = backend, model_name
        self.fingerprint, self.root = fingerprint, root  # reported in /v1/models
        self.default_domain, self.max_new_tokens = default_domain, max_new_tokens
        if default_domain:
            get_domain(default_domain)  # an unknown domain fails at start-up
        self.batcher = Batcher(backend, max_batch)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def build_server(cfg, paths) -> tuple[WorldModelServer, Path]:
    """The server of `lwm serve` for serve.checkpoint (or the run's latest trained stage)."""
    scfg = cfg.serve
    if scfg.checkpoint:
        ckpt = Path(scfg.checkpoint)
    else:
        trained = [paths.model(s) for s in ("rl", "sft", "cpt") if (paths.model(s) / "config.json").exists()]
        if not trained:
            raise FileNotFoundError(f"serve: no trained model under {paths.root}; set serve.checkpoint")
        ckpt = trained[0]
    fingerprint = checkpoint_fingerprint(ckpt)
    backend = load_backend(scfg.backend, ckpt, cfg.model, cfg.backend.dtype)
    server = WorldModelServer(backend, scfg.host, scfg.port, scfg.model_name or ckpt.name,
                              scfg.domain, scfg.max_new_tokens, scfg.max_batch,
                              fingerprint=fingerprint, root=str(ckpt.resolve()))
    return server, ckpt


def serve(cfg, paths) -> dict:
    """The `lwm serve` stage: blocks until interrupted."""
    server, ckpt = build_server(cfg, paths)
    print(f"serving {ckpt} (fingerprint {server.fingerprint}, {type(server.backend).__name__}) as "
          f"'{server.model_name}' at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return {"checkpoint": str(ckpt), "url": server.url}
