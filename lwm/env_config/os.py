"""Settings of the os collection environment (a desktop app under Xvfb, read through AT-SPI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OsEnvConfig:
    app: str = "mousepad"             # the desktop program of every episode
    screen_width: int = 1280          # Xvfb screen, pixels
    screen_height: int = 1024         # Xvfb screen, pixels
    action_timeout_s: float = 30.0    # an action still running after this is stopped (an error)
    start_timeout_s: float = 60.0     # Xvfb, D-Bus and the app up and in the AT-SPI tree
    settle_s: float = 0.2             # quiet time: the tree must be unchanged this long
    pause_s: float = 0.02             # pyautogui.PAUSE between the calls of one action
    max_nodes: int = 400              # tree lines kept per observation
    # GTK reserves far more address space than the terminal sandbox's default RLIMIT_AS.
    memory_mb: int = 4096             # address space per process
    disk_mb: int = 128                # the writable tmpfs
    pyautogui_path: str = "/usr/local/lib/lwm-pyautogui"   # `pip install --target` of pyautogui
