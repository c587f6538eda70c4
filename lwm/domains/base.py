"""What a domain is: its system prompt, how its actions and observations render, its verifiers,
and what the pipeline asks of it: its kind (text, tool or GUI), its action grammar, what an
error observation looks like, the judge's paragraph on it and a few demo actions.

Every built-in domain and every user domain is a subclass registered by name; the pipeline
never branches on a domain's name. Every hook has a default here, so a user domain registered
from config (`data.extra_domains`) works with the filters, verifiers, prepare and the world env.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lwm.schema import Trajectory

OBS_OPEN, OBS_CLOSE = "<predicted_observation>", "</predicted_observation>"
# The judge's per-domain paragraphs, <name>.txt, kept with the judge's other prompts.
JUDGE_GUIDES = Path(__file__).resolve().parent.parent / "endpoints" / "prompts" / "domains"
# Failure markers across domains (shell, Python, HTTP, tool and MCP errors); a domain with a
# sharper notion sets its own `error_pattern`.
ERROR = re.compile(r"(?i)(\berror\b|exception|traceback|invalid|not found|no such|unknown|"
                   r"unrecognized|malformed|failed|cannot|unable to|denied|fatal:|\bis_?error\b|"
                   r"\b[45]\d\d\b)")


class ActionError(ValueError):
    """An action that is not well formed in its domain's grammar (the environment cannot run it)."""


_THINK = re.compile(r"<think>.*?</think>", re.S)


def without_reasoning(reply: str | None) -> str:
    """A model reply with its <think>...</think> blocks removed."""
    return _THINK.sub("", reply or "")


def json_values(reply: str | None, opener: str):
    """Every JSON value that starts at an `opener` ("{" or "[") of a model reply outside its
    reasoning, in order: where agents' actions are looked for."""
    text = without_reasoning(reply)
    decoder = json.JSONDecoder()
    for match in re.finditer(re.escape(opener), text):
        try:
            yield decoder.raw_decode(text, match.start())[0]
        except json.JSONDecodeError:
            continue
_TAGGED = re.compile(re.escape(OBS_OPEN) + r"(.*?)(?:" + re.escape(OBS_CLOSE) + r"|\Z)", re.S)


def extract_observation(text: str) -> tuple[str, bool]:
    """The predicted observation in a model reply, and whether it was tagged.

    Reasoning (<think>...</think>, or anything before the tag) is never part of the result; the
    last tagged block wins, as in AgentWorldBench's parser; untagged text is the fallback.
    """
    text = without_reasoning(text)
    blocks = _TAGGED.findall(text)
    if blocks:
        return blocks[-1].strip("\n"), True
    return text.replace("**Environment Observation:**", "").strip("\n"), False


@dataclass
class Verdict:
    """Rule-verifier result: scores in [0, 1]; `score` is what eval reports and RL rewards."""
    score: float
    format: float
    content: float
    details: dict

    def as_dict(self) -> dict:
        return {"score": self.score, "format": self.format, "content": self.content, **self.details}


class Domain:
    name: str = ""
    action_format: str = ""       # what an action string holds
    observation_format: str = ""  # what an observation string holds
    description: str = ""         # the environment, for the system prompt
    # "text" (free-form actions and observations), "tool" (JSON tool calls, see tools.py) or
    # "gui" (observations are screens: the curation filters treat environment crashes and
    # no-change turns of GUI domains specially).
    kind: str = "text"
    error_pattern: re.Pattern = ERROR
    judge_guide: str = ""         # the judge's paragraph; empty: JUDGE_GUIDES/<name>.txt if any
    demo_actions: tuple[str, ...] = ()  # plausible actions in action_format, for demos and tests

    # System-prompt variants: the recipe trains RL on variant 0, CPT on variant 1 and SFT on
    # the others (drawn per sample) so the model does not overfit one phrasing. Each variant
    # frames the same facts; the dynamic parts (tools, task, simulation instruction) are
    # appended to every variant.
    PROMPT_VARIANTS = (
        "You are a world model of {env}. An agent acts in the environment; you answer every "
        "action with the exact observation the real environment would return next.",
        "You simulate {env}. Given the history of actions and observations, produce what the "
        "environment shows after the agent's latest action.",
        "Act as {env}. Each user turn carries an agent's action; reply with the environment's "
        "response to it, exactly as the real system would produce it.",
        "Your job is to predict the next state of {env} after an agent's action, faithfully "
        "reproducing its format and content.",
        "Pretend to be {env} interacting with an autonomous agent. For each action, return "
        "the resulting observation and nothing an agent could not see.",
    )

    def system_prompt(self, traj: Trajectory, variant: int = 0, instruction: str = "") -> str:
        """The system prompt; `instruction` is a simulation instruction (e.g. inject an error)."""
        head = self.PROMPT_VARIANTS[variant % len(self.PROMPT_VARIANTS)].format(env=self.description)
        parts = [
            head,
            f"Actions: {self.action_format}",
            f"Observations: {self.observation_format}",
            "Stay consistent with every earlier turn: files, outputs, errors and state persist. "
            "You may reason first; then write the observation, and nothing else, between "
            f"{OBS_OPEN} and {OBS_CLOSE}.",
        ]
        if traj.tools:
            parts.append("Tools the agent can call:\n" + json.dumps(traj.tools, ensure_ascii=False))
        if traj.task:
            parts.append(f"The agent's task: {traj.task}")
        if instruction:
            parts.append(f"Simulation instruction: {instruction}")
        return "\n\n".join(parts)

    def render_action(self, action: str) -> str:
        """The action as the JSON block body: compact JSON kept as is, plain text quoted."""
        try:
            return json.dumps(json.loads(action), ensure_ascii=False, indent=None)
        except (json.JSONDecodeError, TypeError):
            return json.dumps(action, ensure_ascii=False)

    def check_action(self, action: str) -> None:
        """Raise ActionError unless `action` is well formed in this domain's grammar. The
        default knows no grammar and accepts every action."""

    def is_malformed(self, action: str) -> bool:
        try:
            self.check_action(action)
            return False
        except ActionError:
            return True

    def undeclared_tool(self, traj: Trajectory) -> str | None:
        """A tool a step calls that the record does not declare (tool domains only), or None."""
        return None

    def is_error(self, observation: str) -> bool:
        """Whether an observation reports a failure (the environment's error answer)."""
        return bool(self.error_pattern.search(observation))

    def judge_paragraph(self) -> str:
        """What the judge should hold strictly and what it should judge for plausibility here."""
        if self.judge_guide:
            return self.judge_guide.strip()
        path = JUDGE_GUIDES / f"{self.name}.txt"
        return path.read_text(encoding="utf-8").strip() if self.name and path.exists() else ""

    def check_format(self, observation: str) -> float:
        """How well an observation follows this domain's format, in [0, 1]."""
        return 1.0 if observation.strip() else 0.0

    def verify(self, prediction: str, reference: str) -> Verdict:
        """Score a raw model reply against the real observation (format and content)."""
        obs, tagged = extract_observation(prediction)
        fmt = 0.5 * tagged + 0.5 * self.check_format(obs)
        content = similarity(obs, reference)
        exact = float(obs.strip() == reference.strip())
        score = 0.2 * fmt + 0.8 * content
        return Verdict(score, fmt, content, {"tagged": float(tagged), "exact": exact})


def similarity(pred: str, ref: str) -> float:
    """Line-aware similarity: mean of line-set F1 and character sequence ratio."""
    p_lines = [l.rstrip() for l in pred.strip().splitlines()]
    r_lines = [l.rstrip() for l in ref.strip().splitlines()]
    if not p_lines and not r_lines:
        return 1.0
    if not p_lines or not r_lines:
        return 0.0
    common = sum(min(p_lines.count(l), r_lines.count(l)) for l in set(p_lines))
    f1 = 2 * common / (len(p_lines) + len(r_lines))
    ratio = difflib.SequenceMatcher(None, pred.strip()[:4000], ref.strip()[:4000],
                                    autojunk=False).ratio()
    return 0.5 * f1 + 0.5 * ratio
