"""The terminal domain: Terminal-Bench keystroke actions, tmux screen observations."""

from __future__ import annotations

import json
import re

from lwm.domains.base import (ActionError, Domain, Verdict, extract_observation, indented_json,
                              similarity)

# The shell prompt the collector's bash prints (PS1 'user@sandbox:\w$ ', trailing blanks cut
# from the screen): user@host:cwd$ or, for root, #.
PROMPT = re.compile(r"[\w.-]+@[\w.-]+:[^$#\n]*[$#]")
_ERROR = re.compile(r"(No such file|not found|Error|error:|Traceback|Permission denied|fatal:)")


def parse_keystrokes(action: str) -> list[dict]:
    """A Terminal-Bench keystroke list: [{"keystrokes": str, "duration": seconds >= 0}, ...]."""
    try:
        batches = json.loads(action)
    except (json.JSONDecodeError, TypeError) as e:
        raise ActionError(f"action is not JSON ({e}): {str(action)[:200]!r}") from None
    if not isinstance(batches, list):
        raise ActionError(f"action must be a JSON list of keystroke batches, got "
                          f"{type(batches).__name__}: {action[:200]!r}")
    for i, b in enumerate(batches):
        if not isinstance(b, dict) or not isinstance(b.get("keystrokes"), str):
            raise ActionError(f"action batch {i} needs a string 'keystrokes': {action[:200]!r}")
        duration = b.get("duration", 0)
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
            raise ActionError(f"action batch {i}: 'duration' must be a number >= 0, got {duration!r}")
    return batches


class TerminalDomain(Domain):
    name = "terminal"
    description = "a Linux terminal: a bash shell in a tmux window"
    action_format = (
        'a JSON list of keystroke batches, [{"keystrokes": "...", "duration": seconds}], sent '
        "to the tmux pane in order (\\n presses Enter, C-c style names are control keys); "
        "each batch is followed by a wait of `duration` seconds."
    )
    observation_format = (
        "the visible tmux screen after the action, as plain text: the lines currently on the "
        "screen from top to bottom, trailing blank lines removed, ending with the shell prompt "
        "when the shell is waiting for input."
    )
    error_pattern = _ERROR
    demo_actions = ('[{"keystrokes": "ls -la\\n", "duration": 0.5}]',
                    '[{"keystrokes": "cat notes.txt\\n", "duration": 0.5}]')

    def __init__(self, width: int = 100, height: int = 24):
        self.width, self.height = width, height

    def check_action(self, action: str) -> None:
        parse_keystrokes(action)

    def render_action(self, action: str) -> str:
        try:
            return indented_json(json.loads(action))
        except json.JSONDecodeError:
            return json.dumps([{"keystrokes": action, "duration": 1.0}], indent=2)

    def check_format(self, observation: str) -> float:
        """Half for fitting the screen, half for the shell prompt: on the last line (the shell
        waits for input), or only earlier on the screen (a command still runs) for half of it."""
        lines = observation.splitlines()
        if not lines:
            return 0.0
        fits = len(lines) <= self.height and all(len(l) <= self.width for l in lines)
        if PROMPT.fullmatch(lines[-1].rstrip()):
            prompt = 1.0
        elif any(PROMPT.match(l) for l in lines):
            prompt = 0.5
        else:
            prompt = 0.0
        return 0.5 * fits + 0.5 * prompt

    def verify(self, prediction: str, reference: str) -> Verdict:
        obs, tagged = extract_observation(prediction)
        fmt = 0.5 * tagged + 0.5 * self.check_format(obs)
        p_last = (obs.strip().splitlines() or [""])[-1].strip()
        r_last = (reference.strip().splitlines() or [""])[-1].strip()
        last_line = float(p_last == r_last)           # where the shell is now (prompt, cwd)
        error_match = float(self.is_error(obs) == self.is_error(reference))
        content = 0.7 * similarity(obs, reference) + 0.15 * last_line + 0.15 * error_match
        score = 0.2 * fmt + 0.8 * content
        return Verdict(score, fmt, content, {
            "tagged": float(tagged), "last_line": last_line, "error_match": error_match,
            "exact": float(obs.strip() == reference.strip())})
