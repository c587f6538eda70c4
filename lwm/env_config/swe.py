"""Settings of the swe collection environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SweEnvConfig:
    action_timeout_s: float = 30.0     # a shell command (a test run) is killed after this
    # Source distributions unpacked as the episode's repository; filled at install time by
    # `pip download --no-binary :all: --no-deps six==1.17.0 toolz==1.0.0 more-itertools==10.5.0 -d <dir>`
    sdist_dir: str = "~/.cache/lwm/sdists"  # unpacked as the episodes' repositories
    max_output_chars: int = 16000      # longer tool results keep their head and tail
