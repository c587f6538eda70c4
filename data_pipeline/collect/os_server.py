"""The desktop inside one os-domain sandbox: Xvfb, a private D-Bus, one app, AT-SPI dumps.

Runs INSIDE the sandbox under Debian's /usr/bin/python3 (pyatspi is a Debian package; the
project's own interpreter is not visible there). The host copies this file into the sandbox and
talks to it with one JSON object per line on stdin/stdout:

    -> {"op": "start", "argv": [...], "width": W, "height": H, ...}   <- {"tree": "..."}
    -> {"op": "step", "code": "pyautogui.click(10, 12)", ...}        <- {"tree": "...", "error": ""}

Agent code runs in a fresh child process (never in this one), so a crash, an exit() or a hung
loop in the action cannot take the tree dumper down. This process stays the parent of every
desktop process and reaps them.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pyatspi

HIDDEN = -(2 ** 31)          # where GTK places the items of a closed menu
INTERACTIVE = {"push button", "toggle button", "check box", "radio button", "menu", "menu item",
               "check menu item", "radio menu item", "combo box", "text", "entry",
               "password text", "spin button", "page tab", "list item", "table cell",
               "tree item", "link", "slider", "scroll bar", "icon"}

# Runs in the child: executes the action with pyautogui; only frames of the action itself are
# reported, as a Python REPL would print them.
RUNNER = r"""
import sys, traceback
try:
    import pyautogui
except BaseException as e:  # the environment's fault, not the action's: exit code 3
    sys.stderr.write(f"cannot import pyautogui: {type(e).__name__}: {e}")
    sys.exit(3)
pyautogui.FAILSAFE = False
pyautogui.PAUSE = float(sys.argv[1])
code = sys.stdin.read()
try:
    exec(compile(code, "<action>", "exec"), {"__name__": "__main__", "pyautogui": pyautogui})
except SystemExit:
    pass
except BaseException as e:
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<action>":
        tb = tb.tb_next
    sys.stderr.write("".join(traceback.format_exception(type(e), e, tb or e.__traceback__)))
    sys.exit(1)
"""

def _cell(text, limit=200):
    text = (text or "").replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[:limit] + "..."


def _children(acc):
    """An accessible's children; none when it vanished (a dialog closing while we walk)."""
    try:
        return [c for c in (acc.getChildAtIndex(i) for i in range(acc.childCount)) if c is not None]
    except Exception:
        return []


def linearize(max_nodes):
    """The OSWorld-style table: one visible node per line, tab-separated."""
    rows = ["tag\tname\ttext\tposition (top-left x&y)\tsize (w&h)"]
    desktop = pyatspi.Registry.getDesktop(0)

    def walk(acc):
        if len(rows) > max_nodes:
            return
        try:
            role, name, states = acc.getRoleName(), acc.name or "", acc.getState()
        except Exception:  # a node that vanished while we walked
            return
        if not states.contains(pyatspi.STATE_SHOWING):
            return  # hidden subtrees (closed menus, other tabs) are not on screen
        pos = size = None
        try:
            comp = acc.queryComponent()
            pos, size = comp.getPosition(pyatspi.DESKTOP_COORDS), comp.getSize()
        except Exception:
            pass
        text = ""
        try:
            t = acc.queryText()
            text = t.getText(0, min(t.characterCount, 500))
        except Exception:
            pass
        on_screen = pos is not None and pos[0] > HIDDEN and size[0] > 0 and size[1] > 0
        if on_screen and (name.strip() or text.strip() or role in INTERACTIVE):
            rows.append(f"{role}\t{_cell(name.strip())}\t{_cell(text)}\t"
                        f"({pos[0]}, {pos[1]})\t({size[0]}, {size[1]})")
        for child in _children(acc):
            walk(child)

    for app in _children(desktop):
        for child in _children(app):
            walk(child)
    return "\n".join(rows[:max_nodes + 1])


def _x_accepts():
    """Xvfb creates its socket before it listens: a connect is the real readiness test."""
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect("/tmp/.X11-unix/X0")
        return True
    except OSError:
        return False
    finally:
        sock.close()


def settled_tree(req, limit_s=3.0):
    """The tree once two reads settle_s apart agree: dialogs open and close asynchronously."""
    deadline = time.monotonic() + limit_s
    time.sleep(req["settle_s"])
    tree = linearize(req["max_nodes"])
    while time.monotonic() < deadline:
        time.sleep(req["settle_s"] / 2)
        again = linearize(req["max_nodes"])
        if again == tree:
            break
        tree = again
    return tree


class Desktop:
    def __init__(self):
        self.procs = []

    def spawn(self, argv, **kw):
        # Each program's messages go to a log in /run/lwm, which the host reads on failure.
        log = open(f"/run/lwm/{os.path.basename(argv[0])}.log", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **kw)
        self.procs.append(proc)
        return proc

    def wait_for(self, ready, what, timeout):
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up in {timeout}s")
            time.sleep(0.05)

    def start(self, req):
        os.environ.update(DISPLAY=":0", DBUS_SESSION_BUS_ADDRESS="unix:path=/run/lwm/bus",
                          GTK_A11Y="atspi", NO_AT_BRIDGE="0", XDG_RUNTIME_DIR="/run/lwm",
                          GDK_BACKEND="x11", GSETTINGS_BACKEND="memory")
        # python-xlib refuses to connect without an authority file, even an empty one.
        open(os.path.join(os.environ["HOME"], ".Xauthority"), "ab").close()
        self.spawn(["Xvfb", ":0", "-screen", "0", f"{req['width']}x{req['height']}x24",
                    "-nolisten", "tcp", "-nolisten", "local", "-noreset"])
        self.wait_for(_x_accepts, "Xvfb", req["timeout"])
        self.spawn(["dbus-daemon", "--session", "--nofork", "--nopidfile",
                    "--address=unix:path=/run/lwm/bus"])
        self.wait_for(lambda: os.path.exists("/run/lwm/bus"), "dbus-daemon", req["timeout"])
        app = self.spawn(req["argv"], cwd=os.environ["HOME"])

        def app_ready():
            if app.poll() is not None:
                raise RuntimeError(f"{req['argv'][0]} exited with code {app.returncode}")
            return "\nframe\t" in linearize(50)
        self.wait_for(app_ready, req["argv"][0], req["timeout"])
        return {"tree": settled_tree(req)}

    def step(self, req):
        env = dict(os.environ, PYTHONPATH=req["pyautogui_path"])
        child = subprocess.Popen([sys.executable, "-c", RUNNER, str(req["pause_s"])],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env=env,
                                 cwd=os.environ["HOME"])
        try:
            _, err = child.communicate(req["code"], timeout=req["timeout"])
            if child.returncode == 3:
                raise RuntimeError(err.strip())
            error = err.strip() if child.returncode else ""
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            error = f"TimeoutError: the action was stopped after {req['timeout']}s"
        return {"tree": settled_tree(req), "error": error}


def main():
    desktop = Desktop()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = getattr(desktop, req["op"])(req)
        except Exception as e:
            reply = {"fatal": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
