#!/usr/bin/env bash
# Installs everything the pipeline needs on a fresh Debian/Ubuntu machine: the sandbox tools
# (tmux, bubblewrap) from apt, torch's CPU wheel first (a bare `torch` requirement would pull a
# multi-GB CUDA build), then this project with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v tmux >/dev/null || ! command -v bwrap >/dev/null || ! command -v prlimit >/dev/null; then
  $SUDO apt-get install -y -qq tmux bubblewrap git util-linux >/dev/null 2>&1 || {
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq tmux bubblewrap git util-linux >/dev/null; }
fi
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
