"""Scripted desktop tasks for the os domain: a text editor (mousepad) driven with pyautogui.

Each task is a realistic multi-step interaction (typing, menus, dialogs, selection, undo,
search, files) with parameters drawn from random.Random(f"{seed}:{index}"), and at least one
action an agent gets wrong (a misspelt pyautogui call, an undefined name, a syntax error, a
missing image), whose traceback is part of the observation.

Positions come from the app's own layout: there is no window manager, so the main window sits
at (0, 0) with its menu bar at y=0..25 and its text area below.
"""

from __future__ import annotations

import random

from data_pipeline.collect.base import ScriptedTask

WORDS = ("report budget meeting notes draft review invoice summary agenda project schedule "
         "client server backup release deploy update config plan design test result metric "
         "team weekly monthly quarterly todo fix issue feature launch").split()
NAMES = ("notes todo report draft summary plan log journal minutes ideas").split()
TEXT = (320, 250)                     # inside the text area
MENUS = {"File": (19, 12), "Edit": (59, 12), "Search": (110, 12), "View": (164, 12),
         "Document": (229, 12), "Help": (294, 12)}
FILE_SAVE_AS = (150, 189)             # File > Save As... (the 7th item)
EDIT_UNDO, EDIT_REDO = (150, 37), (150, 62)
DIALOG_OK = (1047, 833)               # Save / Open of the file chooser (opens at 0,0 on 1280x1024)

# Mistakes agents make, each raising in Python (NameError, AttributeError, SyntaxError, ...).
MISTAKES = [
    "pyautogui.type_text('{w}')",                        # no such function
    "save_file('{w}.txt')",                              # an undefined helper
    "pyautogui.hotkey(ctrl, 's')",                       # unquoted key name
    "pyautogui.press('enter'",                           # unbalanced parenthesis
    "pyautogui.click(*pyautogui.locateCenterOnScreen('{w}.png'))",   # no such image
]


def _click(xy) -> str:
    return f"pyautogui.click({xy[0]}, {xy[1]})"


def _type(text: str) -> str:
    return f"pyautogui.typewrite({text!r})"


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _mistake(rng: random.Random) -> str:
    return rng.choice(MISTAKES).format(w=rng.choice(WORDS))


def _lines(rng: random.Random, n: int) -> list[str]:
    return [_sentence(rng, rng.randint(3, 7)) for _ in range(n)]


def write_and_save_as(rng):
    # The dialog opens in ~: the bare name is typed. A typed path starts GTK's location
    # completion, which on a loaded machine drops the keys that arrive while it pops up.
    name, lines = f"{rng.choice(NAMES)}_{rng.randint(1, 99)}.txt", _lines(rng, rng.randint(1, 3))
    return (f"Write a short note and save it as ~/{name}.",
            [_click(TEXT), _type("\n".join(lines)), _mistake(rng),
             "pyautogui.hotkey('ctrl', 'shift', 's')", _type(name), _click(DIALOG_OK)], {})


def menu_save_as(rng):
    name = f"{rng.choice(NAMES)}.txt"
    return (f"Type a line, then save it through File > Save As... as {name}.",
            [_click(TEXT), _type(_sentence(rng, 5)), _click(MENUS["File"]), _mistake(rng),
             _click(FILE_SAVE_AS), _type(name), _click(DIALOG_OK)], {})


def append_to_file(rng):
    name, lines = f"{rng.choice(NAMES)}.txt", _lines(rng, rng.randint(2, 4))
    extra = _sentence(rng, 4)
    return (f"Add the line '{extra}' at the end of ~/{name} and save it.",
            [_click(TEXT), "pyautogui.hotkey('ctrl', 'end')", _mistake(rng),
             _type("\n" + extra), "pyautogui.hotkey('ctrl', 's')"],
            {"files": {name: "\n".join(lines) + "\n"}, "open": name})


def select_and_delete(rng):
    words = _sentence(rng, rng.randint(4, 8))
    replacement = _sentence(rng, 2)
    return (f"Type '{words}', then replace the whole line with '{replacement}'.",
            [_click(TEXT), _type(words), "pyautogui.hotkey('shift', 'home')", _mistake(rng),
             "pyautogui.press('delete')", _type(replacement)], {})


def undo_redo(rng):
    first, second = _sentence(rng, 3), _sentence(rng, 3)
    return ("Type two phrases, undo the second with Edit > Undo, then redo it.",
            [_click(TEXT), _type(first), _type(" " + second), _click(MENUS["Edit"]),
             _click(EDIT_UNDO), _mistake(rng), _click(MENUS["Edit"]), _click(EDIT_REDO)], {})


def find_word(rng):
    name, lines = f"{rng.choice(NAMES)}.md", _lines(rng, rng.randint(3, 6))
    word = rng.choice(" ".join(lines).split())
    return (f"Find the word '{word}' in ~/{name}.",
            [_click(TEXT), "pyautogui.hotkey('ctrl', 'f')", _type(word), _mistake(rng),
             "pyautogui.press('enter')", "pyautogui.press('escape')"],
            {"files": {name: "\n".join(lines) + "\n"}, "open": name})


def go_to_line(rng):
    name, lines = f"{rng.choice(NAMES)}.txt", _lines(rng, rng.randint(5, 9))
    target = rng.randint(2, len(lines))
    return (f"Go to line {target} of ~/{name} and insert 'TODO: ' there.",
            [_click(TEXT), "pyautogui.hotkey('ctrl', 'l')", _mistake(rng),
             _type(str(target)), "pyautogui.press('enter')", "pyautogui.press('home')",
             _type("TODO: ")],
            {"files": {name: "\n".join(lines) + "\n"}, "open": name})


def open_with_dialog(rng):
    name, lines = f"{rng.choice(NAMES)}.cfg", _lines(rng, rng.randint(2, 4))
    return (f"Open ~/{name} with File > Open (Ctrl+O) and read it.",
            [_click(TEXT), "pyautogui.hotkey('ctrl', 'o')", _type(f"/home/user/{name}"),
             _mistake(rng), _click(DIALOG_OK), "pyautogui.hotkey('ctrl', 'home')"],
            {"files": {name: "\n".join(lines) + "\n"}})


def browse_menus(rng):
    menus = rng.sample(sorted(MENUS), 3)
    actions = [_click(TEXT)]
    for menu in menus:
        actions += [_click(MENUS[menu]), "pyautogui.press('escape')"]
    actions.insert(2, _mistake(rng))
    return (f"Look through the {', '.join(menus)} menus.", actions, {})


def close_unsaved(rng):
    return ("Type a line, try to close the window, and cancel in the unsaved-changes dialog.",
            [_click(TEXT), _type(_sentence(rng, 4)), "pyautogui.hotkey('ctrl', 'w')",
             _mistake(rng), "pyautogui.press('escape')", _type(" kept")], {})


TASKS = [write_and_save_as, menu_save_as, append_to_file, select_and_delete, undo_redo,
         find_word, go_to_line, open_with_dialog, browse_menus, close_unsaved]


def make_task(index: int, seed: int) -> ScriptedTask:
    rng = random.Random(f"{seed}:{index}")
    kind = TASKS[index % len(TASKS)]
    instruction, actions, params = kind(rng)
    return ScriptedTask(kind.__name__, instruction, actions, params)
