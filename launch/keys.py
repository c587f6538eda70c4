"""The config keys of the schema (lwm/config.py and the dataclasses it nests), each with its type,
default and meaning, and the check of command-line overrides against them.

A key's meaning is the trailing `# comment` beside its field in the dataclass's source, read with
tokenize: the comment is the documentation, written once. A field that redeclares an inherited
one (a stage's own default for `lr`) keeps the base field's comment unless it has its own.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import tokenize
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from launch import CONFIG_DIR
from lwm.config import LWMConfig


class UsageError(ValueError):
    """A command line the CLI refuses before composing anything: printed as one short message."""


@dataclass(frozen=True)
class Key:
    name: str          # dotted: sft.teacher.judge.base_url
    type: str          # the annotation as written: int, list[str], float | None
    default: object    # the schema's default (presets in configs/ may set another)
    meaning: str       # the comment beside the field
    section: bool      # a nested dataclass (its keys are listed below it), not a value


@cache
def _trailing_comments(path: str) -> dict[int, str]:
    """Line number -> the comment that ends a line of code, in one source file."""
    comments, code = {}, set()
    with tokenize.open(path) as f:
        for tok in tokenize.generate_tokens(f.readline):
            if tok.type == tokenize.COMMENT:
                if tok.start[0] in code:
                    comments[tok.start[0]] = tok.string.lstrip("#").strip()
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                code.add(tok.start[0])
    return comments


@cache
def _class_comments(cls: type) -> dict[str, str]:
    """Field name -> its trailing comment, for the fields `cls` itself declares."""
    path = inspect.getsourcefile(cls)
    comments = _trailing_comments(path)
    tree = ast.parse(Path(path).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            lines = range(stmt.lineno, stmt.end_lineno + 1)
            found = [comments[n] for n in lines if n in comments]
            if found:
                out[stmt.target.id] = found[0]
    return out


def meaning(cls: type, name: str) -> str:
    """The comment beside field `name` of `cls`, or of the nearest base class that has one."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and name in _class_comments(klass):
            return _class_comments(klass)[name]
    return ""


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


@cache
def schema_keys(root: type = LWMConfig) -> dict[str, Key]:
    """Every key of the schema in declaration order, sections included, by dotted name."""
    keys: dict[str, Key] = {}

    def walk(cls: type, prefix: str):
        for f in dataclasses.fields(cls):
            name = prefix + f.name
            nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            is_section = nested is not None and dataclasses.is_dataclass(nested)
            keys[name] = Key(name, str(f.type), None if is_section else _default(f),
                             meaning(cls, f.name), is_section)
            if is_section:
                walk(nested, name + ".")
    walk(root, "")
    return keys


def groups() -> dict[str, list[str]]:
    """Config group -> its presets (configs/<group>/*.yaml), Hydra's own groups left out."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(Path(CONFIG_DIR).iterdir()) if d.is_dir() and d.name != "hydra"}


def closest(word: str, candidates) -> str | None:
    """The candidate most like `word` (difflib), or one with the same last part (`sft.beta` ->
    rl.beta), or None."""
    candidates = list(candidates)
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaf = word.rsplit(".", 1)[-1]
    same = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf]
    return same[0] if same else None


def _is_free(key: str, keys: dict[str, Key]) -> bool:
    """Whether `key` lies under a dict- or list-typed field, whose entries the schema leaves open
    (data.mixture.web, cluster.env.NCCL_DEBUG)."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        k = keys.get(".".join(parts[:i]))
        if k is not None and not k.section and k.type.startswith(("dict", "list")):
            return True
    return False


def check_overrides(stage: str, overrides: list[str]) -> None:
    """Refuses, with the closest key or preset, an override of a key the schema lacks, a
    preset that does not exist, and a `+` (add) of a key: every key is in the schema already,
    so Hydra's "use +key" advice would only let a typo through."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, OverrideType
    from hydra.errors import OverrideParseException
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise UsageError(str(err).strip()) from None
    keys, presets = schema_keys(), groups()
    listing = f"`lwm {stage} --help` lists the keys"
    for o in parsed:
        key, line = o.key_or_group, o.input_line
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or o.package is not None:
            continue  # Hydra's own settings and launcher plugins
        if key in presets and o.type == OverrideType.CHANGE:
            if o.value() is None or o.is_sweep_override() and not isinstance(o.value(), ChoiceSweep):
                continue  # plan=null (no preset), glob(...): Hydra matches it against the presets
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            for value in values:
                if value not in presets[key] and value != f"{key}_schema":
                    near = closest(value, presets[key])
                    hint = f"; did you mean {key}={near}?" if near else ""
                    raise UsageError(f"unknown preset {key}={value}{hint} "
                                     f"(presets: {', '.join(presets[key])})")
            continue
        if key in presets:
            continue  # +group=..., ~group: Hydra's defaults list handles these
        known = key in keys or _is_free(key, keys)
        if o.type == OverrideType.ADD and key in keys:
            plain = line[1:]
            raise UsageError(f"'{line}': {key} is in the config already, so '+' (add a new key) "
                             f"is not needed: drop the '+' ({plain})")
        if not known:
            near = closest(key, keys)
            hint = f"; did you mean {near}?" if near else ""
            added = " ('+' cannot add keys to the typed config)" if o.type in (
                OverrideType.ADD, OverrideType.FORCE_ADD) else ""
            raise UsageError(f"unknown key '{key}'{added}{hint} ({listing})")
