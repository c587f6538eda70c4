"""Settings of the web collection environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WebEnvConfig:
    action_timeout_s: float = 5.0            # a click/fill/goto that takes longer is an error
    chromium: str = "/usr/bin/chromium"      # Debian's chromium (apt: chromium)
    trac_venv: str = "~/.cache/lwm/web/venv"  # Trac 1.6 in its own venv (see web_app.py)
    cache_dir: str = "~/.cache/lwm/web"      # the template project is built here once
    port: int = 8765                         # preferred tracd port (a free one if taken)
    start_timeout_s: float = 20.0            # tracd and chromium up
    viewport_width: int = 1280               # browser viewport, pixels
    viewport_height: int = 720               # browser viewport, pixels
    max_obs_lines: int = 400                 # longer accessibility trees are cut
