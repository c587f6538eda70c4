"""What a domain is: its system prompt, how its actions and observations render, its verifiers,
and what the pipeline asks of it: its kind (text, tool or GUI), its action grammar, what an
error observation looks like, the judge's paragraph on it and a few demo actions.

Every built-in domain and every user domain is a subclass registered by name; the pipeline
never branches on a domain's name. Every hook has a default here, so a user domain registered
from config (`data.extra_domains`) works with the filters, verifiers, prepare and the world env.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cydifflib import SequenceMatcher

from lwm.schema import Trajectory

OBS_OPEN, OBS_CLOSE = "<predicted_observation>", "</predicted_observation>"
# The judge's per-domain paragraphs, <name>.txt, kept with the judge's other prompts.
JUDGE_GUIDES = Path(__file__).resolve().parent.parent / "endpoints" / "prompts" / "domains"
# Failure markers across domains (shell, Python, HTTP, tool and MCP errors); a domain with a
# sharper notion sets its own `error_pattern`.
ERROR = re.compile(r"(?i)(\berror\b|exception|traceback|invalid|not found|no such|unknown|"
                   r"unrecognized|malformed|failed|cannot|unable to|denied|fatal:|\bis_?error\b|"
                   r"\b[45]\d\d\b)")


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # a scalar (or [], {}) by the C encoder


def indented_json(value, pad: str = "") -> str:
    """json.dumps(value, ensure_ascii=False, indent=2) of a value json.loads returned (string
    keys), the same text: `indent` makes json encode in pure Python, slowly, so containers are
    laid out here as it lays them out, and each scalar is encoded as it encodes them. `pad`: the
    indentation of the line the value is on."""
    inner = pad + "  "
    if isinstance(value, list) and value:
        return f"[\n{inner}" + f",\n{inner}".join([indented_json(v, inner) for v in value]) + f"\n{pad}]"
    if isinstance(value, dict) and value:
        return f"{{\n{inner}" + f",\n{inner}".join(
            [f"{_ENCODE(k)}: {indented_json(v, inner)}" for k, v in value.items()]) + f"\n{pad}}}"
    return _ENCODE(value)


class ActionError(ValueError):
    """An action that is not well formed in its domain's grammar (the environment cannot run it)."""


_THINK_TAG = re.compile(r"<(/?)think>", re.I)
HISTORY_OBS = "**Environment Observation:**"  # the marker of a real observation in a turn history
OBS_TAG = "predicted_observation"


def strip_reasoning(text: str | None, answer_tag: str = "") -> str:
    """`text` without its reasoning, as AgentWorldBench's evaluation removes it.

    Every <think> is paired with the first unpaired </think> after it and the span between them
    goes (nested blocks merge into one span); a </think> left without an opening removes
    everything before it; a <think> left open removes everything after it, up to the first
    <answer_tag> after it when one is given (the answer survives unclosed reasoning). Tags match
    in any case. Text with no think tag comes back as it is, otherwise stripped.
    """
    text = text or ""
    tags = [(m.start(), m.end(), not m.group(1)) for m in _THINK_TAG.finditer(text)]
    if not tags:
        return text
    paired = [False] * len(tags)
    spans = []
    for i, (start, _, opening) in enumerate(tags):
        if not opening:
            continue
        close = next((j for j in range(i + 1, len(tags)) if not paired[j] and not tags[j][2]), None)
        if close is not None:
            paired[i] = paired[close] = True
            spans.append((start, tags[close][1]))
    answer = re.compile(f"<{re.escape(answer_tag)}>", re.I) if answer_tag else None
    for i, (start, end, opening) in enumerate(tags):
        if paired[i]:
            continue
        if not opening:
            spans.append((0, end))
        else:
            found = answer.search(text, start) if answer else None
            spans.append((start, found.start() if found else len(text)))
    kept, pos = [], 0
    for start, end in sorted(spans):
        if start > pos:
            kept.append(text[pos:start])
        pos = max(pos, end)
    kept.append(text[pos:])
    return "".join(kept).strip()


def without_reasoning(reply: str | None) -> str:
    """A model reply with its reasoning removed (strip_reasoning without an answer tag)."""
    return strip_reasoning(reply)


def last_tagged(text: str, tag: str) -> str | None:
    """The content of the last <tag> block of `text` (tags in any case; an unclosed last block
    runs to the end), stripped; None when there is no <tag>."""
    opens = list(re.finditer(f"<{re.escape(tag)}>", text, re.I))
    if not opens:
        return None
    start = opens[-1].end()
    close = re.compile(f"</{re.escape(tag)}>", re.I).search(text, start)
    return text[start:close.start() if close else len(text)].strip()


def clean_marker(text: str) -> str:
    """An observation without its "**Environment Observation:**" marker, stripped, as the
    benchmark cleans references and predictions before judging them."""
    if text.startswith(HISTORY_OBS):
        return text[len(HISTORY_OBS):].strip()
    return text.replace(HISTORY_OBS, "").strip()


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


def parse_output(reply: str | None) -> tuple[str, bool]:
    """What a world model's reply predicts, as AgentWorldBench's parser reads it, and whether it
    was tagged: reasoning removed (strip_reasoning, with <predicted_observation> as the answer
    boundary), then the last <predicted_observation> block, else the whole remaining text."""
    text = strip_reasoning(reply, OBS_TAG)
    block = last_tagged(text, OBS_TAG)
    return (text.strip(), False) if block is None else (block, True)


def extract_observation(text: str | None) -> tuple[str, bool]:
    """The predicted observation in a model reply (parse_output, marker removed), and whether it
    was tagged. Reasoning is never part of it."""
    obs, tagged = parse_output(text)
    return clean_marker(obs), tagged


def observation_for_judge(reply: str | None) -> str:
    """The prediction a judge is shown, exactly as the benchmark's evaluation builds it: an empty
    reply, or an untagged one with nothing left once reasoning is removed, reads "No output"."""
    obs, tagged = parse_output(reply)
    return clean_marker(obs if (reply and (tagged or obs)) else "No output")


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
    # Its real environment's collector, 'package.module:Class' (a Collector, see
    # data_pipeline/collect/base.py); empty: its trajectories come from `lwm ingest`.
    collector: str = ""
    demo_actions: tuple[str, ...] = ()  # plausible actions in action_format, for demos and tests
    # How a turn renders (lwm/render.py), as the benchmark's turns do: the fence of the action
    # block ("json": the action as JSON indented by 2; "python": code actions as written), and
    # whether turn 1 shows the initial state under **Current State:** (None: every domain but
    # the tool domains, whose calls start from no visible state).
    action_language: str = "json"
    state_block: bool | None = None

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

    def shows_state(self) -> bool:
        """Whether turn 1 renders the initial state (see `state_block`)."""
        return self.kind != "tool" if self.state_block is None else self.state_block

    def render_action(self, action: str) -> str:
        """The body of the action block: JSON indented by 2 (plain text as a JSON string), or
        the action as written for a code fence."""
        if self.action_language != "json":
            return action
        try:
            return indented_json(json.loads(action))
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
    """Line-aware similarity: mean of line-set F1 and character sequence ratio.

    The ratio is difflib.SequenceMatcher(None, pred, ref, autojunk=False).ratio() on the first
    4,000 characters, computed by cydifflib (the same algorithm compiled, equal to the last bit;
    bench/bench_score.py checks). Not an LCS ratio (rapidfuzz's Indel): SequenceMatcher matches
    the longest common block first, so an LCS ratio is >= it: another metric, other scores."""
    pred, ref = pred.strip(), ref.strip()
    if pred == ref:
        return 1.0
    p_lines = [l.rstrip() for l in pred.splitlines()]
    r_lines = [l.rstrip() for l in ref.splitlines()]
    if not p_lines or not r_lines:
        return 0.0
    p_count, r_count = Counter(p_lines), Counter(r_lines)
    shared = p_count.keys() & r_count.keys()
    common = sum(min(p_count[l], r_count[l]) for l in shared)
    f1 = 2 * common / (len(p_lines) + len(r_lines))
    ratio = SequenceMatcher(None, pred[:4000], ref[:4000], autojunk=False).ratio()
    return 0.5 * f1 + 0.5 * ratio
