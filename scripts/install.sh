#!/usr/bin/env bash
# Installs everything the pipeline needs on a fresh Debian/Ubuntu machine (root or sudo):
#   - the environments the collectors drive (apt): tmux + bubblewrap (terminal, sandbox),
#     chromium (web), Xvfb + AT-SPI + mousepad (os), node/npm (MCP servers), python3-doc and
#     man pages (the search corpus);
#   - torch's CPU wheel first (a bare `torch` requirement would pull a multi-GB CUDA build),
#     then this project with its test extras;
#   - per-domain assets: real sdists for swe, MCP servers, the search index, Trac for web,
#     pyautogui where the os sandbox can see it.
# Every step is idempotent: rerunning it only fills in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
CACHE="${LWM_CACHE:-$HOME/.cache/lwm}"

# Two groups, installed as the environments were built and measured: the desktop stack without
# recommended packages, chromium and the docs with them (their fonts set the GUI layouts).
APT_BARE=(tmux bubblewrap git util-linux man-db python3-venv xvfb dbus dbus-x11 at-spi2-core
  python3-pyatspi python3-tk python3-xlib mousepad xauth x11-utils xdotool)
APT_FULL=(chromium python3-doc python3-pytest)
command -v node >/dev/null && command -v npm >/dev/null || APT_FULL+=(nodejs npm)
missing() { for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done; }
bare=($(missing "${APT_BARE[@]}")); full=($(missing "${APT_FULL[@]}"))
if [ ${#bare[@]} -gt 0 ] || [ ${#full[@]} -gt 0 ]; then
  echo "install: apt ${bare[*]} ${full[*]}"
  $SUDO apt-get update -qq
  APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
  [ ${#bare[@]} -eq 0 ] || $APT --no-install-recommends "${bare[@]}" >/dev/null
  [ ${#full[@]} -eq 0 ] || $APT "${full[@]}" >/dev/null
fi

python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'

# swe: real Python projects, unpacked per episode.
mkdir -p "$CACHE/sdists"
[ -n "$(ls "$CACHE/sdists")" ] || python3 -m pip download -q --no-binary :all: --no-deps \
  six==1.17.0 toolz==1.0.0 more-itertools==10.5.0 -d "$CACHE/sdists"

# mcp: Python servers in a venv under /usr (the sandbox sees only the host's /usr), npm servers.
if [ ! -x /usr/local/lib/lwm-mcp/bin/mcp-server-git ]; then
  $SUDO /usr/bin/python3 -m venv /usr/local/lib/lwm-mcp
  $SUDO /usr/local/lib/lwm-mcp/bin/pip install -q mcp-server-git mcp-server-time
fi
for server in filesystem memory everything; do
  npm ls -g "@modelcontextprotocol/server-$server" >/dev/null 2>&1 || \
    $SUDO npm install -g -s "@modelcontextprotocol/server-$server" >/dev/null
done

# os: pyautogui for the sandboxed action runner (Debian's python3 inside the sandbox).
[ -d /usr/local/lib/lwm-pyautogui/pyautogui ] || \
  $SUDO python3 -m pip install -q --target /usr/local/lib/lwm-pyautogui pyautogui==0.9.54

# web: Trac in its own venv (its dependencies clash with the project's).
[ -x "$CACHE/web/venv/bin/tracd" ] || {
  python3 -m venv "$CACHE/web/venv" && "$CACHE/web/venv/bin/pip" install -q Trac==1.6; }

# search: Debian's long package descriptions and the BM25 index over the offline corpus.
python3 -m data_pipeline.collect.search_index --fetch >/dev/null
