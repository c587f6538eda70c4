"""The terminal domain: Terminal-Bench keystroke actions, tmux screen observations."""

from __future__ import annotations

import json
import re

from lwm.domains.base import Domain, Verdict, extract_observation, similarity

_PROMPT = re.compile(r"[\w.-]+@[\w.-]+:[^\n]*[$#] ?$")
_ERROR = re.compile(r"(No such file|not found|Error|error:|Traceback|Permission denied|fatal:)")


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

    def __init__(self, width: int = 100, height: int = 24):
        self.width, self.height = width, height

    def render_action(self, action: str) -> str:
        try:
            return json.dumps(json.loads(action), ensure_ascii=False)
        except json.JSONDecodeError:
            return json.dumps([{"keystrokes": action, "duration": 1.0}])

    def check_format(self, observation: str) -> float:
        lines = observation.splitlines()
        if not lines:
            return 0.0
        fits = len(lines) <= self.height and all(len(l) <= self.width for l in lines)
        return 0.5 * fits + 0.5 * bool(_PROMPT.search(lines[-1]) or lines[-1].strip())

    def verify(self, prediction: str, reference: str) -> Verdict:
        obs, tagged = extract_observation(prediction)
        fmt = 0.5 * tagged + 0.5 * self.check_format(obs)
        p_last = (obs.strip().splitlines() or [""])[-1].strip()
        r_last = (reference.strip().splitlines() or [""])[-1].strip()
        last_line = float(p_last == r_last)           # where the shell is now (prompt, cwd)
        error_match = float(bool(_ERROR.search(obs)) == bool(_ERROR.search(reference)))
        content = 0.7 * similarity(obs, reference) + 0.15 * last_line + 0.15 * error_match
        score = 0.2 * fmt + 0.8 * content
        return Verdict(score, fmt, content, {
            "tagged": float(tagged), "last_line": last_line, "error_match": error_match,
            "exact": float(obs.strip() == reference.strip())})
