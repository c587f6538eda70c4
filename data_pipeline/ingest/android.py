"""AndroidWorld episodes and AndroidControl TFRecords into android-domain trajectories.

Both become the same text: an action is android_world's JSONAction as compact JSON, an
observation is the screen's UI elements, one per line, with the index an action's "index"
refers to. The first screen is the initial observation; step t's observation is the screen
after action t.

- androidworld (`convert_androidworld`): .json / .json.gz / .jsonl files of android_world
  episode dicts (goal, task_template, instance_id, is_successful, episode_data) whose
  episode_data is the T3A step data (before_element_list, after_element_list, action_output
  "Reason: ...\\nAction: {...}", or action_output_json). Pickles are never read: unpickling
  runs code. The exact layout is in tests/data/ingest/android/README.md.
- androidcontrol (`convert_androidcontrol`): TFRecord files (plain or GZIP, as published) of
  tf.train.Example episodes, read with data_pipeline.ingest.tfrecord (no tensorflow, no
  generated proto classes).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Iterator

from data_pipeline.ingest.common import Reject, files, malformed, parsed
from data_pipeline.ingest.tfrecord import (Corrupt, ints, parse_example, proto_fields, signed,
                                             tfrecords)
from lwm.schema import MALFORMED, Step, Trajectory

# ---------------------------------------------------------------------------------------------
# JSON actions (android_world/env/json_action.py: the action types, keys and directions).

_ACTION_TYPES = {"click", "double_tap", "scroll", "swipe", "input_text", "navigate_home",
                 "navigate_back", "keyboard_enter", "open_app", "status", "wait", "long_press",
                 "answer", "unknown"}
_ACTION_KEYS = ("action_type", "index", "x", "y", "text", "direction", "goal_status",
                "app_name", "keycode", "clear_text")   # JSONAction's field order
_DIRECTIONS = {"left", "right", "down", "up"}


class _Bad(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def action_json(raw, field: str) -> str:
    """A JSON action as compact JSON in JSONAction's key order (JSONAction.json_str), after the
    checks JSONAction.__post_init__ makes; _Bad names what is wrong."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise _Bad(field, f"action is not JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise _Bad(field, "action is not a JSON object")
    unknown = sorted(set(raw) - set(_ACTION_KEYS))
    if unknown:
        raise _Bad(field, f"unknown action key '{unknown[0]}'")
    act = {k: raw[k] for k in _ACTION_KEYS if raw.get(k) is not None}
    if act.get("action_type") not in _ACTION_TYPES:
        raise _Bad(field, f"unknown action_type {act.get('action_type')!r}")
    for key in ("index", "x", "y"):
        if key in act:
            value = act[key]
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise _Bad(field, f"{key} is not a number")
            try:
                act[key] = int(value) if key == "index" or float(value).is_integer() else float(value)
            except ValueError:
                raise _Bad(field, f"{key} is not a number") from None
    if "index" in act and ("x" in act or "y" in act):
        raise _Bad(field, "both an index and x/y")
    if "direction" in act and act["direction"] not in _DIRECTIONS:
        raise _Bad(field, f"unknown direction {act['direction']!r}")
    if "text" in act and not isinstance(act["text"], str):
        act["text"] = str(act["text"])
    return json.dumps(act, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Screens: one common element shape for both sources, rendered one element per line.

_FLAGS = ("clickable", "long_clickable", "editable", "scrollable", "checkable", "checked",
          "selected", "focused")


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else f"{float(v):.3f}"


def render_element(i: int, el: dict) -> str:
    """`[3] android.widget.Button "Save" desc="..." id=com.app:id/save bounds=(l,t,r,b) clickable`"""
    parts = [f"[{i}]", el.get("class_name") or "(no class)"]
    for key, label in (("text", ""), ("content_description", "desc="), ("hint_text", "hint="),
                       ("tooltip", "tooltip=")):
        if el.get(key):
            parts.append(label + json.dumps(str(el[key]), ensure_ascii=False))
    if el.get("resource_name"):
        parts.append(f"id={el['resource_name']}")
    if el.get("bounds"):
        parts.append("bounds=(" + ",".join(_num(v) for v in el["bounds"]) + ")")
    parts += [flag for flag in _FLAGS if el.get(flag)]
    if el.get("enabled") is False:
        parts.append("disabled")
    if el.get("visible") is False:
        parts.append("invisible")
    return " ".join(parts)


def render_screen(elements: list[dict]) -> str:
    return "\n".join(render_element(i, el) for i, el in enumerate(elements)) or "(no UI elements)"


def _world_element(raw, field: str) -> dict:
    """An android_world UIElement (dataclasses.asdict) in the common shape."""
    if not isinstance(raw, dict):
        raise _Bad(field, "UI element is not an object")
    box = raw.get("bbox_pixels") or raw.get("bbox")
    bounds = None
    if box is not None:
        try:
            bounds = tuple(float(box[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        except (TypeError, KeyError, ValueError):
            raise _Bad(f"{field}.bbox_pixels", "expected {x_min, x_max, y_min, y_max}") from None
    el = {k: raw.get(k) for k in ("class_name", "text", "content_description", "hint_text",
                                  "tooltip")}
    el["resource_name"] = raw.get("resource_name") or raw.get("resource_id")
    el["bounds"] = bounds
    for flag in _FLAGS:
        el[flag] = raw.get(f"is_{flag}")
    el["enabled"], el["visible"] = raw.get("is_enabled"), raw.get("is_visible")
    return el


def _world_screen(raw, field: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _Bad(field, "expected a list of UI elements")
    return render_screen([_world_element(e, f"{field}[{j}]") for j, e in enumerate(raw)])


def _count(raw) -> int | None:
    return len(raw) if isinstance(raw, list) else None


# ---------------------------------------------------------------------------------------------
# androidworld

_ACTION_LINE = re.compile(r"Action:(.*)", re.DOTALL)


def _world_action(step: dict, t: int) -> tuple[str | None, str]:
    """(action JSON or None, why not) of step t: action_output_json where an agent stores it,
    else the JSON after 'Action:' in the T3A/M3A action_output text."""
    raw = step.get("action_output_json")
    if raw is None:
        text = step.get("action_output")
        m = _ACTION_LINE.search(text) if isinstance(text, str) else None
        start = m.group(1).find("{") if m else -1
        if start < 0:
            return None, "no 'Action: {...}' in action_output: the agent executed nothing"
        try:
            raw, _ = json.JSONDecoder().raw_decode(m.group(1)[start:])
        except json.JSONDecodeError as e:
            return None, f"action in action_output is not JSON ({e.msg}): the agent executed nothing"
    try:
        return action_json(raw, f"episode_data[{t}].action_output"), ""
    except _Bad as e:
        return None, f"{e.reason}: android_world rejects it, so nothing was executed"


def _steps_of(data) -> list[dict]:
    """episode_data as a list of per-step dicts: episode_runner stores a dict of lists."""
    if isinstance(data, list) and all(isinstance(s, dict) for s in data):
        return data
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise _Bad("episode_data", "expected a dict of per-step lists (or a list of step dicts)")
    n = max((len(v) for v in data.values()), default=0)
    if any(len(v) != n for v in data.values()):
        raise _Bad("episode_data", "per-step lists of different lengths")
    return [{k: v[t] for k, v in data.items()} for t in range(n)]


def _world_trajectory(ep, traj_id: str, domain: str) -> Trajectory:
    if not isinstance(ep, dict):
        raise _Bad("<record>", "episode is not an object")
    if not isinstance(ep.get("goal"), str) or not ep["goal"]:
        raise _Bad("goal", "missing or not a string")
    steps_in = _steps_of(ep.get("episode_data"))
    if not steps_in:
        raise _Bad("episode_data", "no steps")
    before = [_world_screen(s.get("before_element_list"), f"episode_data.before_element_list[{t}]")
              for t, s in enumerate(steps_in)]
    if before[0] is None:
        raise _Bad("episode_data.before_element_list[0]", "no first screen")
    steps, skipped, final = [], [], None
    for t, s in enumerate(steps_in):
        action, why = _world_action(s, t)
        if action is None:
            skipped.append({"step": t, "reason": why})
            continue
        index, count = json.loads(action).get("index"), _count(s.get("before_element_list"))
        if index is not None and count is not None and not 0 <= index < count:
            skipped.append({"step": t, "reason": f"index {index} is past the screen's elements: "
                                                 "android_world executed nothing"})
            continue
        after = _world_screen(s.get("after_element_list"), f"episode_data.after_element_list[{t}]")
        if after is None and t + 1 < len(steps_in):
            after = before[t + 1]   # the next step starts from the screen this action left
        if after is None:
            if t + 1 < len(steps_in):
                raise _Bad(f"episode_data.before_element_list[{t + 1}]",
                           f"step {t} executed an action but no screen follows it")
            final = action   # the closing status/answer: the episode ends, no screen follows
            continue
        steps.append(Step(action, after))
    if not steps:
        raise _Bad("episode_data", "no executed action with a screen after it")
    meta = {k: ep[k] for k in ("task_template", "instance_id", "is_successful", "agent_name",
                               "seed") if ep.get(k) is not None}
    if skipped:
        meta["skipped_steps"] = skipped
    if final:
        meta["final_action"] = final
    return Trajectory(id=traj_id, domain=domain, source="ingest.androidworld", task=ep["goal"],
                      initial_observation=before[0], steps=steps, meta=meta)


def _json_records(path: Path) -> Iterator[tuple[str, int, object]]:
    """(file, record, episode or Reject): a .json file holds a list of episodes (one
    IncrementalCheckpointer file) or one; a .jsonl line holds one, decoded line by line."""
    for f in files(path, (".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        try:
            opener = gzip.open if f.name.endswith(".gz") else open
            with opener(f, "rb") as fh:
                data = fh.read()
        except (OSError, EOFError) as e:
            yield str(f), 0, Reject(str(f), 0, "<file>", f"unreadable ({e})")
            continue
        if ".jsonl" not in f.name:
            value = parsed(data, f, 0, "<file>")
            if isinstance(value, list):
                yield from ((str(f), i, ep) for i, ep in enumerate(value))
            else:
                yield str(f), 0, value
            continue
        for n, raw in enumerate(data.split(b"\n"), 1):
            if raw.strip():
                yield str(f), n, parsed(raw, f, n)


def convert_androidworld(path: Path, cfg) -> Iterator[Trajectory | Reject]:
    domain = cfg.ingest.domain or "android"
    for where, record, ep in _json_records(path):
        if isinstance(ep, Reject):
            yield ep
            continue
        rel = Path(where).relative_to(path) if path.is_dir() else Path(Path(where).name)
        stem = re.sub(r"\.jsonl?(\.gz)?$", "", str(rel)).replace("/", "_")
        try:
            traj = _world_trajectory(ep, f"androidworld-{stem}-{record}", domain)
        except _Bad as e:
            traj = Reject(where, record, e.field, e.reason)
        except MALFORMED as e:
            traj = malformed(where, record, e)
        yield traj


# AndroidAccessibilityForest, field numbers from android_env/proto/a11y/ (checked against
# google-deepmind/android_env at commit 0be7d50): android_accessibility_forest.proto windows = 1;
# android_accessibility_window_info.proto tree = 11; android_accessibility_tree.proto nodes = 1;
# rect.proto ProtoRect left/top/right/bottom = 1..4.
FOREST_WINDOWS, WINDOW_TREE, TREE_NODES = 1, 11, 1
# android_accessibility_node_info.proto AndroidAccessibilityNodeInfo:
NODE_STRINGS = {3: "class_name", 4: "content_description", 5: "hint_text", 6: "package_name",
                7: "text", 10: "resource_name", 31: "tooltip"}
NODE_FLAGS = {12: "checkable", 13: "checked", 14: "clickable", 15: "editable", 16: "enabled",
              18: "focused", 19: "long_clickable", 21: "scrollable", 22: "selected",
              23: "visible"}
NODE_UNIQUE_ID, NODE_BOUNDS, NODE_CHILD_IDS = 1, 2, 25


def parse_node(buf) -> dict:
    node: dict = {"child_ids": [], "bounds": (0, 0, 0, 0)}
    for num, wire, value in proto_fields(buf):
        if num in NODE_STRINGS and wire == 2:
            node[NODE_STRINGS[num]] = bytes(value).decode("utf-8", "replace")
        elif num in NODE_FLAGS and wire == 0:
            node[NODE_FLAGS[num]] = bool(value)
        elif num == NODE_CHILD_IDS:
            node["child_ids"] += ints(wire, value)
        elif num == NODE_UNIQUE_ID and wire == 0:
            node["unique_id"] = signed(value)
        elif num == NODE_BOUNDS and wire == 2:
            rect = [0, 0, 0, 0]
            for n, w, v in proto_fields(value):
                if 1 <= n <= 4 and w == 0:
                    rect[n - 1] = signed(v)
            node["bounds"] = tuple(rect)
    return node


def forest_elements(buf) -> list[dict]:
    """The elements android_world's forest_to_ui_elements keeps (leaves, and nodes with a
    content description or that scroll), without those invisible to the user."""
    out = []
    for num, _, window in proto_fields(buf):
        if num != FOREST_WINDOWS:
            continue
        for n2, _, tree in proto_fields(window):
            if n2 != WINDOW_TREE:
                continue
            for n3, _, raw in proto_fields(tree):
                if n3 != TREE_NODES:
                    continue
                node = parse_node(raw)
                keep = not node["child_ids"] or node.get("content_description") or node.get("scrollable")
                if keep and node.get("visible"):
                    node.pop("visible")
                    out.append(node)
    return out


# ---------------------------------------------------------------------------------------------
# androidcontrol

def _control_files(path: Path) -> list[Path]:
    """TFRecord files: *.tfrecord(.gz) or the published shard names (android_control-00000-of-00020)."""
    if path.is_file():
        return [path]
    shard = re.compile(r"(\.tfrecords?(\.gz)?|-\d{5}-of-\d{5})$")
    return [p for p in files(path, ("",)) if shard.search(p.name)]


def _control_trajectory(ex: dict, domain: str) -> Trajectory:
    for key in ("episode_id", "goal", "accessibility_trees", "actions"):
        if key not in ex:
            raise _Bad(key, "feature missing")
    if len(ex["episode_id"]) != 1 or len(ex["goal"]) != 1:
        raise _Bad("episode_id", "expected one episode_id and one goal")
    trees, actions = ex["accessibility_trees"], ex["actions"]
    shots = ex.get("screenshots")
    if shots is not None and len(shots) != len(trees):
        raise _Bad("accessibility_trees", f"{len(trees)} trees for {len(shots)} screenshots")
    # Published episodes have one screen more than actions; a log with as many actions as
    # screens has a last action no screen follows: it is kept in meta, not as a step.
    if len(actions) not in (len(trees) - 1, len(trees)) or len(trees) < 2:
        raise _Bad("actions", f"{len(actions)} actions cannot align with {len(trees)} screens")
    screens = []
    for t, raw in enumerate(trees):
        try:
            screens.append(render_screen(forest_elements(raw)))
        except (ValueError, UnicodeDecodeError) as e:
            raise _Bad(f"accessibility_trees[{t}]", f"not an AndroidAccessibilityForest ({e})") from None
    acts = [action_json(a, f"actions[{t}]") for t, a in enumerate(actions)]
    meta: dict = {"episode_id": ex["episode_id"][0]}
    if ex.get("step_instructions"):
        meta["step_instructions"] = [s.decode("utf-8", "replace") for s in ex["step_instructions"]]
    if ex.get("screenshot_widths") and ex.get("screenshot_heights"):
        meta["screen_size"] = [ex["screenshot_widths"][0], ex["screenshot_heights"][0]]
    if len(acts) == len(screens):
        meta["final_action"] = acts.pop()
    return Trajectory(id=f"androidcontrol-{ex['episode_id'][0]}", domain=domain,
                      source="ingest.androidcontrol",
                      task=ex["goal"][0].decode("utf-8", "replace"),
                      initial_observation=screens[0],
                      steps=[Step(a, screens[t + 1]) for t, a in enumerate(acts)], meta=meta)


def convert_androidcontrol(path: Path, cfg) -> Iterator[Trajectory | Reject]:
    domain = cfg.ingest.domain or "android"
    for f in _control_files(path):
        with open(f, "rb") as probe:
            gz = probe.read(2) == b"\x1f\x8b"
        try:
            with (gzip.open if gz else open)(f, "rb") as fh:
                for index, data in tfrecords(fh):
                    if isinstance(data, Corrupt):
                        yield Reject(str(f), index, data.field, data.reason)
                        continue
                    try:
                        ex = parse_example(data)
                    except (ValueError, UnicodeDecodeError) as e:
                        yield Reject(str(f), index, "<record>", f"not a tf.train.Example ({e})")
                        continue
                    try:
                        traj = _control_trajectory(ex, domain)
                    except _Bad as e:
                        traj = Reject(str(f), index, e.field, e.reason)
                    except MALFORMED as e:
                        traj = malformed(str(f), index, e)
                    yield traj
        except (OSError, EOFError) as e:   # a cut or corrupt gzip stream
            yield Reject(str(f), "<file>", "<file>", f"unreadable ({e})")
