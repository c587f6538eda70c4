"""Writes the android ingest fixtures in this folder (python make_fixtures.py); the test checks
that the stored files equal what this writes.

The AndroidControl TFRecord is ENCODED here with a small protobuf writer that follows the field
numbers data_pipeline/ingest/android.py reads (tf.train.Example; android_env's
AndroidAccessibilityForest). Reader and writer share those numbers, so the fixture cannot catch
a wrong one: they were checked against google-deepmind/android_env's a11y protos and must be
re-checked against a real AndroidControl shard before production use (README.md).
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).parent


# ---- protobuf wire format -----------------------------------------------------------------

def varint(v: int) -> bytes:
    v &= (1 << 64) - 1   # negative int32/int64: ten-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def field_varint(num: int, v: int) -> bytes:
    return varint(num << 3) + varint(v) if v else b""   # proto3 leaves defaults out


def field_bytes(num: int, data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return varint(num << 3 | 2) + varint(len(data)) + data


def packed(num: int, values: list[int]) -> bytes:
    return field_bytes(num, b"".join(varint(v) for v in values)) if values else b""


# ---- tf.train.Example ---------------------------------------------------------------------

def example(features: dict[str, tuple[str, list]]) -> bytes:
    entries = b""
    for key, (kind, values) in features.items():
        if kind == "bytes":
            lst = field_bytes(1, b"".join(field_bytes(1, v) for v in values))
        else:   # int64 lists are packed, as TensorFlow writes them
            lst = field_bytes(3, packed(1, values))
        entries += field_bytes(1, field_bytes(1, key) + field_bytes(2, lst))
    return field_bytes(1, entries)


# ---- AndroidAccessibilityForest (android_env/proto/a11y) ----------------------------------

def node(uid: int, cls: str, bounds: tuple[int, int, int, int], children=(), text="", desc="",
         res="", pkg="com.android.settings", unpacked_children=False, **flags) -> bytes:
    out = field_varint(1, uid)
    out += field_bytes(2, b"".join(field_varint(i + 1, v) for i, v in enumerate(bounds)))
    for num, value in ((3, cls), (4, desc), (6, pkg), (7, text), (10, res)):
        if value:
            out += field_bytes(num, value)
    numbers = {"checkable": 12, "checked": 13, "clickable": 14, "editable": 15, "enabled": 16,
               "focused": 18, "long_clickable": 19, "scrollable": 21, "selected": 22}
    for name, on in {"enabled": True, "visible": True, **flags}.items():
        out += field_varint(23 if name == "visible" else numbers[name], int(on))
    if unpacked_children:   # parsers must accept both encodings of a repeated int32
        out += b"".join(field_varint(25, c) if c else varint(25 << 3) + b"\0" for c in children)
    else:
        out += packed(25, list(children))
    return out


def forest(*windows: list[bytes]) -> bytes:
    return b"".join(field_bytes(1, field_varint(3, i + 1) + field_bytes(11, b"".join(
        field_bytes(1, n) for n in nodes))) for i, nodes in enumerate(windows))


def screen(title: str, rows: list[tuple[str, str, str]], extra=()) -> bytes:
    """A settings-like screen: a root frame, a title, one clickable row per (text, desc, id)."""
    ids = list(range(2, 2 + len(rows)))
    nodes = [node(0, "android.widget.FrameLayout", (0, 0, 1080, 2400), children=[1] + ids),
             node(1, "android.widget.TextView", (42, 160, 800, 260), text=title,
                  res="com.android.settings:id/title")]
    for uid, (text, desc, res) in zip(ids, rows):
        top = 300 + 180 * (uid - 2)
        nodes.append(node(uid, "android.widget.Button", (0, top, 1080, top + 170), text=text,
                          desc=desc, res=res, clickable=True))
    return forest(nodes + list(extra))


def png(width: int, height: int) -> bytes:
    """A real (grey) PNG: screenshots are carried, never decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ---- TFRecord framing ---------------------------------------------------------------------

def masked_crc(data: bytes) -> int:
    from data_pipeline.ingest.tfrecord import crc32c_py
    crc = crc32c_py(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(records: list[bytes]) -> bytes:
    out = b""
    for data in records:
        length = struct.pack("<Q", len(data))
        out += length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))
    return out


def gzipped(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as f:   # reproducible bytes
        f.write(data)
    return buf.getvalue()


def control_episode(episode_id: int, goal: str, trees: list[bytes], actions: list, steps: list[str]) -> bytes:
    return example({
        "episode_id": ("int64", [episode_id]),
        "goal": ("bytes", [goal.encode()]),
        "screenshots": ("bytes", [png(4, 8) for _ in trees]),
        "screenshot_widths": ("int64", [1080] * len(trees)),
        "screenshot_heights": ("int64", [2400] * len(trees)),
        "accessibility_trees": ("bytes", trees),
        "actions": ("bytes", [a if isinstance(a, bytes) else json.dumps(a).encode() for a in actions]),
        "step_instructions": ("bytes", [s.encode() for s in steps]),
    })


def androidcontrol_records() -> list[bytes]:
    home = screen("Home", [("Settings", "", "com.android.launcher3:id/icon"),
                           ("Clock", "", "com.android.launcher3:id/icon")])
    settings = screen("Settings", [("Network & internet", "", "android:id/title"),
                                   ("Display", "", "android:id/title")])
    network = screen("Network & internet", [("Wi-Fi", "Wi-Fi, on", "android:id/switch_widget")])
    # Off-screen (negative) bounds, an invisible node, unpacked child ids, a scrollable parent.
    extra = [node(9, "androidx.recyclerview.widget.RecyclerView", (0, -120, 1080, 2400),
                  children=[10], scrollable=True, unpacked_children=True),
             node(10, "android.widget.TextView", (0, -120, 1080, 0), text="Hidden", visible=False)]
    wifi_off = screen("Wi-Fi", [("Use Wi-Fi", "Wi-Fi, off", "android:id/switch_widget")], extra)
    display = screen("Display", [("Dark theme", "", "android:id/switch_widget")])
    return [
        control_episode(1001, "Turn off Wi-Fi in the settings", [home, settings, network, wifi_off],
                        [{"action_type": "open_app", "app_name": "Settings"},
                         {"action_type": "click", "x": 540, "y": 385},
                         {"action_type": "click", "x": 540.0, "y": 385}],
                        ["Open the Settings app", "Tap Network & internet", "Tap Wi-Fi to turn it off"]),
        # As many actions as screens: the last one has no screen after it.
        control_episode(1002, "Open the display settings", [settings, display],
                        [{"action_type": "click", "x": 540, "y": 565}, {"action_type": "wait"}],
                        ["Tap Display", "Wait for the page"]),
        control_episode(1003, "Bad action type", [home, settings],
                        [{"action_type": "tap", "x": 1, "y": 2}], ["Tap"]),
        control_episode(1004, "Too few actions", [home, settings, network, display],
                        [{"action_type": "navigate_back"}], ["Go back"]),
        control_episode(1005, "Broken tree", [home, b"\x0a\xff\xff"],
                        [{"action_type": "navigate_home"}], ["Go home"]),
    ]


# ---- AndroidWorld episodes ----------------------------------------------------------------

def ui(cls: str, box: tuple[int, int, int, int], text=None, desc=None, res=None, **flags) -> dict:
    """An android_world UIElement as dataclasses.asdict writes it (every field, None unset)."""
    x0, y0, x1, y1 = box
    el = {"text": text, "content_description": desc, "class_name": cls,
          "bbox": None, "bbox_pixels": {"x_min": x0, "x_max": x1, "y_min": y0, "y_max": y1},
          "hint_text": flags.pop("hint", None), "is_checked": False, "is_checkable": False,
          "is_clickable": False, "is_editable": False, "is_enabled": True, "is_focused": False,
          "is_focusable": False, "is_long_clickable": False, "is_scrollable": False,
          "is_selected": False, "is_visible": True, "package_name": "com.google.android.contacts",
          "resource_name": res, "tooltip": None, "resource_id": None}
    el.update({f"is_{k}": v for k, v in flags.items()})
    return el


def reply(action: dict | str, reason: str = "It is the next step.") -> str:
    body = action if isinstance(action, str) else json.dumps(action)
    return f"Reason: {reason}\nAction: {body}"


def contacts_episode() -> dict:
    home = [ui("android.widget.TextView", (60, 1900, 260, 2100), text="Contacts", clickable=True),
            ui("android.widget.TextView", (300, 1900, 500, 2100), text="Phone", clickable=True)]
    contacts = [ui("android.widget.TextView", (40, 150, 600, 250), text="Contacts"),
                ui("android.widget.Button", (800, 2000, 1040, 2200), desc="Create contact",
                   res="com.google.android.contacts:id/floating_action_button", clickable=True)]
    form = [ui("android.widget.EditText", (40, 400, 1040, 520), hint="First name", clickable=True,
               editable=True, focused=True, res="com.google.android.contacts:id/first_name"),
            ui("android.widget.Button", (820, 120, 1040, 240), text="Save", clickable=True,
               res="com.google.android.contacts:id/save")]
    typed = [dict(form[0], text="Ada")] + form[1:]
    saved = [ui("android.widget.TextView", (40, 600, 1040, 700), text="Ada"),
             ui("android.widget.ImageButton", (20, 120, 140, 240), desc="Navigate up", clickable=True)]
    steps = [  # (before, after, action_output) in T3A's order
        (home, contacts, reply({"action_type": "open_app", "app_name": "Contacts"})),
        (contacts, None, "I think I should add a contact."),   # no Action: nothing executed
        (contacts, form, reply({"action_type": "click", "index": 1})),
        (form, typed, reply({"action_type": "input_text", "text": "Ada", "index": 0})),
        (typed, typed, reply({"action_type": "click", "index": 7})),   # out of range: not executed
        (typed, saved, reply({"action_type": "click", "index": 1})),
        (saved, None, reply({"action_type": "status", "goal_status": "complete"})),
    ]
    return {
        "goal": "Create a new contact for Ada.", "task_template": "ContactsAddContact",
        "instance_id": 0, "is_successful": 1.0, "agent_name": "t3a_gpt4", "run_time": 61.2,
        "episode_length": len(steps), "seed": 30,
        "episode_data": {   # episode_runner's dict of per-step lists
            "before_screenshot": [None] * len(steps), "after_screenshot": [None] * len(steps),
            "before_element_list": [s[0] for s in steps],
            "after_element_list": [s[1] for s in steps],
            "action_output": [s[2] for s in steps],
            "summary": ["..."] * len(steps),
            "step_number": list(range(len(steps))),
        },
    }


def wifi_episodes() -> list[dict]:
    settings = [ui("android.widget.TextView", (40, 300, 1040, 420), text="Network & internet",
                   clickable=True, res="android:id/title")]
    switch = [ui("android.widget.Switch", (880, 300, 1040, 420), desc="Wi-Fi", checked=True,
                 checkable=True, clickable=True, res="android:id/switch_widget")]
    off = [dict(switch[0], is_checked=False)]
    # An agent that stores action_output_json and no after-screens: the next step's
    # before-screen is what the action led to.
    good = {"goal": "Turn Wi-Fi off.", "task_template": "SystemWifiTurnOff", "instance_id": 0,
            "is_successful": 1.0, "episode_data": {
                "before_element_list": [settings, switch, off],
                "action_output_json": [{"action_type": "click", "index": 0},
                                       {"action_type": "click", "x": 960, "y": 360},
                                       {"action_type": "status", "goal_status": "complete"}]}}
    no_first = {"goal": "Turn Wi-Fi off.", "task_template": "SystemWifiTurnOff", "instance_id": 1,
                "episode_data": {"before_element_list": [None, switch],
                                 "action_output_json": [{"action_type": "navigate_home"},
                                                        {"action_type": "click", "index": 0}]}}
    bad_element = {"goal": "Turn Wi-Fi off.", "task_template": "SystemWifiTurnOff", "instance_id": 2,
                   "episode_data": {"before_element_list": [settings, ["not an element"]],
                                    "action_output_json": [{"action_type": "click", "index": 0},
                                                           {"action_type": "click", "index": 0}]}}
    return [good, no_first, bad_element]


def write(out: Path = HERE) -> None:
    (out / "androidcontrol-00000-of-00001").write_bytes(gzipped(tfrecord(androidcontrol_records())))
    run = out / "androidworld_run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "ContactsAddContact_0.json.gz").write_bytes(
        gzipped(json.dumps([contacts_episode()], indent=1).encode()))
    (run / "SystemWifiTurnOff_0.json").write_text(json.dumps(wifi_episodes(), indent=1) + "\n")


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(HERE.parents[3]))
    write()
