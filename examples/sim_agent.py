"""An agent loop against the world model instead of a real environment (Sim RL's inner loop).

    # a local checkpoint, perturbing the second step with an injected error
    python examples/sim_agent.py --checkpoint runs/default/rl/final --domain terminal --perturb 2:error
    # a served model (`lwm serve`, vLLM, SGLang), the agent itself an LLM on another endpoint
    python examples/sim_agent.py --base-url http://127.0.0.1:8000/v1 --domain search \
        --agent-base-url http://127.0.0.1:9000/v1 --agent-model my-agent

Without --agent-base-url the agent replays the domain's demo actions. The simulated episode is
printed and written as a trajectory record (lwm/schema.py), ready for training or inspection.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lwm.config import EndpointConfig  # noqa: E402
from lwm.world_env import DEMO_ACTIONS, WorldModelEnv, endpoint_generator, local_generator  # noqa: E402


def llm_agent(ecfg: EndpointConfig, domain: str, task: str):
    """An agent on an OpenAI-compatible endpoint: sees the episode, answers with one action."""
    from lwm.endpoints.client import ChatClient
    from lwm.domains import get_domain
    client, dom = ChatClient(ecfg), get_domain(domain)
    history: list[dict] = [{"role": "system", "content":
                            f"You are an agent in {dom.description}. Task: {task}\n"
                            f"Answer with exactly one action: {dom.action_format}"}]

    def act(observation: str) -> str:
        history.append({"role": "user", "content": observation or "(no output)"})
        action = client.complete(history).strip()
        history.append({"role": "assistant", "content": action})
        return action
    return act


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a local world-model checkpoint")
    src.add_argument("--base-url", help="an OpenAI-compatible endpoint serving the world model")
    p.add_argument("--model", default="", help="model id at --base-url")
    p.add_argument("--domain", default="terminal", choices=sorted(DEMO_ACTIONS))
    p.add_argument("--task", default="look around and report what is there")
    p.add_argument("--initial-state", default="")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--perturb", action="append", default=[],
                   help="STEP:KIND (error, paginate, withhold or free text), e.g. 2:error")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--agent-base-url", default="")
    p.add_argument("--agent-model", default="")
    p.add_argument("--out", default="", help="write the simulated trajectory (JSONL) here")
    args = p.parse_args(argv)

    if args.checkpoint:
        from serve.backends import HFBackend
        generator = local_generator(HFBackend.load(args.checkpoint), max_tokens=args.max_tokens)
    else:
        generator = endpoint_generator(EndpointConfig(base_url=args.base_url, model=args.model,
                                                      max_tokens=args.max_tokens))
    env = WorldModelEnv(args.domain, task=args.task, initial_state=args.initial_state,
                        generator=generator, max_steps=args.steps)
    perturb = dict(item.split(":", 1) for item in args.perturb)
    if args.agent_base_url:
        act = llm_agent(EndpointConfig(base_url=args.agent_base_url, model=args.agent_model,
                                       temperature=0.7), args.domain, args.task)
    else:
        demo = itertools.cycle(DEMO_ACTIONS[args.domain])
        act = lambda observation: next(demo)
    observation, _ = env.reset()
    for step in range(1, args.steps + 1):
        action = act(observation)
        observation, _, terminated, truncated, info = env.step(action, perturb.get(str(step)))
        tag = f" [perturbation: {info['perturbation']}]" if info["perturbation"] else ""
        print(f"--- step {step}{tag}\naction: {action}\nobservation:\n{observation}\n")
        if terminated or truncated:
            break
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(env.trajectory().to_json() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
