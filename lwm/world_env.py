"""WorldModelEnv: a gym-style environment whose observations come from a world model.

An agent (or a Sim-RL trainer) calls reset() and step(action) as with a real environment; each
step renders the episode so far exactly as training did (lwm/render.py: system prompt, earlier
turns with the simulated observations, the new action) and asks the world model for the next
observation. A simulation instruction steers it: a perturbation named in PERTURBATIONS (or any
text) is added to the action's turn, for one step or the whole episode, so agents can be
trained and tested on failures, paginated results and withheld results on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lwm import render
from lwm.domains import domain_names, extract_observation, get_domain
from lwm.schema import Step, Trajectory

PERTURBATIONS = {
    "error": "This action fails in the environment. Write the error the real environment would "
             "return for this action (message, exit status or error result in its usual format), "
             "and do not carry out the action's effect.",
    "paginate": "The result is long and the environment paginates it: return only the first page "
                "of it, and show, as the environment does, that more pages follow (page number, "
                "next-page cursor or a 'more results' marker).",
    "withhold": "The action returns nothing useful: the query matches nothing or the result is "
                "empty. Write the environment's empty or no-results observation.",
}
INSTRUCTION_HEADER = "**Simulation Instruction:**"

# Plausible actions per domain, in its action format, for demos and smoke tests.
DEMO_ACTIONS = {name: list(get_domain(name).demo_actions) for name in domain_names()}

Generator = Callable[[list[dict]], str]


def with_instruction(messages: list[dict], text: str) -> list[dict]:
    """The messages with a simulation instruction added to the current action's turn."""
    if not text:
        return messages
    last = dict(messages[-1])
    last["content"] += "\n\n" + INSTRUCTION_HEADER + "\n" + text
    return [*messages[:-1], last]


def instruction_text(perturbation: str | None) -> str:
    if not perturbation:
        return ""
    return PERTURBATIONS.get(perturbation, perturbation)


@dataclass
class WorldModelEnv:
    domain: str
    task: str = ""
    initial_state: str = ""
    tools: list[dict] = field(default_factory=list)
    generator: Generator | None = None
    max_history: int | None = None     # earlier turns shown to the model (None = all)
    instruction: str = ""              # a perturbation (name or text) applied to every step
    max_steps: int = 0                 # truncate the episode after this many steps (0 = never)

    def __post_init__(self):
        self._domain = get_domain(self.domain)
        if self.generator is None:
            raise ValueError("WorldModelEnv needs a generator (local_generator or endpoint_generator)")
        self.reset()

    def reset(self, task: str | None = None, initial_state: str | None = None) -> tuple[str, dict]:
        if task is not None:
            self.task = task
        if initial_state is not None:
            self.initial_state = initial_state
        self.traj = Trajectory(id="sim", domain=self.domain, source="lwm.world_env", steps=[],
                               task=self.task, tools=list(self.tools),
                               initial_observation=self.initial_state)
        return self.initial_state, {"task": self.task, "tools": self.tools}

    def prompt(self, action: str, perturbation: str | None = None) -> list[dict]:
        """The messages the world model sees for `action` after the steps taken so far."""
        pending = Trajectory(**{**self.traj.__dict__, "steps": [*self.traj.steps, Step(action, "")]})
        messages, _ = render.turn_messages(self._domain, pending, len(pending.steps), self.max_history)
        notes = [t for t in (instruction_text(self.instruction), instruction_text(perturbation)) if t]
        return with_instruction(messages, "\n".join(notes))

    def step(self, action: str, perturbation: str | None = None
             ) -> tuple[str, float, bool, bool, dict]:
        """(observation, reward, terminated, truncated, info), as gymnasium's step. The world
        model gives no task reward (0.0): the agent's task checker supplies it."""
        messages = self.prompt(action, perturbation)
        raw = self.generator(messages)
        observation, tagged = extract_observation(raw)
        self.traj.steps.append(Step(action, observation))
        truncated = bool(self.max_steps) and len(self.traj.steps) >= self.max_steps
        return observation, 0.0, False, truncated, {
            "raw": raw, "tagged": tagged, "messages": messages, "turn": len(self.traj.steps),
            "perturbation": perturbation or self.instruction or None}

    def trajectory(self) -> Trajectory:
        """The simulated episode in the trajectory schema (e.g. to train on or to inspect)."""
        return self.traj


def local_generator(backend, max_tokens: int = 512, temperature: float = 0.0,
                    seed: int | None = 0) -> Generator:
    """A generator over a generation backend: a callable taking a list of Requests (serve's
    HFBackend, VllmBackend)."""
    from lwm.endpoints.generate import Request
    return lambda messages: backend([Request(messages, max_tokens, temperature, seed)])[0]


def endpoint_generator(ecfg) -> Generator:
    """A generator over an OpenAI-compatible endpoint (lwm.config.EndpointConfig fields)."""
    from lwm.endpoints.client import ChatClient
    client = ChatClient(ecfg)
    return client.complete
