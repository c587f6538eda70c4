"""`lwm serve` answers an OpenAI client; WorldModelEnv runs episodes and obeys perturbations."""

import hashlib
import json
import threading
from pathlib import Path

import pytest
from openai import OpenAI

from eval.score import follows_instruction
from lwm.domains import domain_names
from lwm.world_env import DEMO_ACTIONS, INSTRUCTION_HEADER, WorldModelEnv, local_generator
from serve.backends import HFBackend
from serve.server import WorldModelServer
from tests.helpers.checkpoint import save_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_backend(prepared_run, tmp_path_factory):
    ckpt = save_tiny_checkpoint(prepared_run, tmp_path_factory.mktemp("tiny") / "ckpt")
    return HFBackend.load(ckpt)


def start(server: WorldModelServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def test_server_answers_openai_client(tiny_backend):
    server = WorldModelServer(tiny_backend, port=0, model_name="tiny", default_domain="terminal",
                              max_new_tokens=8)
    start(server)
    try:
        client = OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        turn = "### Turn 1\n**Current State:**\nuser@box:~$\n**Action:**\n```json\n" \
               '[{"keystrokes": "ls\\n", "duration": 0.1}]\n```'
        resp = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": turn}],
                                              max_tokens=6, temperature=0)
        assert isinstance(resp.choices[0].message.content, str)
        assert resp.usage.completion_tokens <= 6 and resp.usage.prompt_tokens > 50  # system prompt added
        again = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": turn}],
                                               max_tokens=6, temperature=0)
        assert again.choices[0].message.content == resp.choices[0].message.content  # greedy
        chunks = list(client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": turn}], max_tokens=6, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == resp.choices[0].message.content
        with pytest.raises(Exception, match="messages"):
            client.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    finally:
        server.shutdown()
        server.server_close()


def test_models_entry_reports_the_checkpoint_fingerprint(prepared_run, tmp_path):
    """A client caching answers per model (eval) tells a restarted server on other weights apart
    by this field (tests/test_faults_judge.py)."""
    from lwm.identity import checkpoint_fingerprint
    from lwm.tracking import RunPaths
    from serve.server import build_server
    from tests.conftest import make_cfg
    ckpt = save_tiny_checkpoint(prepared_run, tmp_path / "final")
    server, served = build_server(make_cfg(tmp_path, f"serve.checkpoint={ckpt}", "serve.backend=hf",
                                           "serve.port=0"), RunPaths(tmp_path))
    start(server)
    try:
        (entry,) = OpenAI(base_url=server.url, api_key="unused", max_retries=0).models.list().data
    finally:
        server.shutdown()
        server.server_close()
    assert served == ckpt and entry.id == "final"
    assert entry.model_dump()["checkpoint_fingerprint"] == checkpoint_fingerprint(ckpt)
    assert entry.model_dump()["root"] == str(ckpt.resolve())


def test_env_runs_an_episode_in_every_domain(tiny_backend):
    gen = local_generator(tiny_backend, max_tokens=6)
    for domain in domain_names():
        env = WorldModelEnv(domain, task="inspect the workspace", initial_state="(start)",
                            generator=gen, max_steps=2)
        obs, info = env.reset()
        assert obs == "(start)"
        for i, action in enumerate(DEMO_ACTIONS[domain]):
            obs, reward, terminated, truncated, info = env.step(action)
            assert isinstance(obs, str) and reward == 0.0 and not terminated
            assert info["messages"][-1]["content"].startswith(f"### Turn {i + 1}")
        assert truncated and len(env.trajectory().steps) == 2
        # history is the simulated observation, rendered as training rendered it
        assert env.prompt("x")[2]["content"].startswith("**Environment Observation:**")


def _echo_double(messages):
    """Deterministic test double for generation: the observation is a hash of the prompt, so
    a different prompt gives a different observation; it also obeys an error instruction."""
    text = messages[-1]["content"]
    if INSTRUCTION_HEADER in text and "fails" in text:
        return "<predicted_observation>\nbash: cat: Permission denied\n</predicted_observation>"
    return f"<predicted_observation>\n{hashlib.sha1(text.encode()).hexdigest()[:12]}\n</predicted_observation>"


def test_perturbation_changes_prompt_and_observation(tiny_backend):
    action = DEMO_ACTIONS["terminal"][1]
    plain = WorldModelEnv("terminal", generator=_echo_double)
    perturbed = WorldModelEnv("terminal", generator=_echo_double)
    assert INSTRUCTION_HEADER not in plain.prompt(action)[-1]["content"]
    assert INSTRUCTION_HEADER in perturbed.prompt(action, "error")[-1]["content"]
    obs_plain, *_ = plain.step(action)
    obs_err, *_, info = perturbed.step(action, perturbation="error")
    assert obs_plain != obs_err and info["perturbation"] == "error"
    assert follows_instruction("error", obs_err) and not follows_instruction("error", obs_plain)
    custom = WorldModelEnv("search", generator=_echo_double, instruction="paginate")
    assert "more pages follow" in custom.prompt(DEMO_ACTIONS["search"][0])[-1]["content"]
    # the real tiny model sees the perturbed prompt too (its reply is random-init noise)
    real = WorldModelEnv("terminal", generator=local_generator(tiny_backend, max_tokens=4))
    plain_prompt, withheld = real.prompt(action), real.prompt(action, "withhold")
    assert plain_prompt != withheld
    assert real.step(action, perturbation="withhold")[4]["messages"] == withheld


def test_sim_agent_example_against_a_served_world_model(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "sim_agent", Path(__file__).resolve().parent.parent / "examples" / "sim_agent.py")
    sim_agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim_agent)
    server = WorldModelServer(lambda reqs: [_echo_double(r.messages) for r in reqs], port=0)
    start(server)
    try:
        out = tmp_path / "sim.jsonl"
        assert sim_agent.main(["--base-url", server.url, "--domain", "swe", "--steps", "3",
                               "--perturb", "2:error", "--out", str(out)]) == 0
    finally:
        server.shutdown()
        server.server_close()
    printed = capsys.readouterr().out
    assert "[perturbation: error]" in printed and "Permission denied" in printed
    from lwm.schema import validate
    record = json.loads(out.read_text())
    validate(record)
    assert len(record["steps"]) == 3 and "Permission denied" in record["steps"][1]["observation"]
