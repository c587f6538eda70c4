"""Test doubles for OpenAI-compatible endpoints: WorldModelServer on a free local port with a
scripted backend, reached through the openai client exactly as a real endpoint would be."""

from __future__ import annotations

import re
import threading

from serve.server import WorldModelServer

_FENCED = (r"\*\*World Model Output \(Simulated\):\*\*\n```\n(.*?)\n```\s*"
           r"\*\*Ground Truth \(Real Output\):\*\*\n```\n(.*?)\n```")


def serve(backend):
    # One request per backend call, so a double that fails some requests fails only those.
    server = WorldModelServer(backend, port=0, model_name="double", max_batch=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


def rubric_answer(s, reasoning: str = "") -> str:
    """A judge reply in the benchmark's answer format, every dimension scored `s`."""
    return (f'{reasoning}<final_evaluation>\n```json\n{{"strengths": [], "weaknesses": [], "scores": '
            f'{{"format": {s}, "factuality": {s}, "consistency": {s}, "realism": {s}, "quality": {s}}}}}'
            '\n```\n</final_evaluation>')


def exact_judge(requests):
    """Rubric double: all fives when the prediction equals the real observation, all ones
    otherwise."""
    out = []
    for r in requests:
        pred, real = re.search(_FENCED, r.messages[-1]["content"], re.S).groups()
        s = 5 if pred.strip() == real.strip() else 1
        out.append(rubric_answer(s, "ok "))
    return out
