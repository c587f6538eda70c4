"""What `lwm --help` and `lwm STAGE --help` print: the commands and config groups, one line
each; a stage's keys with type, default and meaning (the comment beside each field, launch/keys.py).
"""

from __future__ import annotations

import json

from launch import CONFIG_DIR
from launch.keys import Key, groups, schema_keys

COMMANDS = {
    "collect": "trajectories from real environments, into runs/<run_name>/collect",
    "prepare": "validate, redact, dedup, split and tokenize: CPT/SFT/RL shards and eval sets",
    "cpt": "continued pretraining on the packed shards",
    "sft": "next-state prediction, loss on the observation",
    "rl": "GRPO or GSPO with the judge + rule reward",
    "eval": "score checkpoints or endpoints on held-out or AgentWorldBench sets",
    "run": "all of them in order: collect, prepare, cpt, sft, rl, eval",
    "ingest": "existing logs into trajectories that prepare picks up",
    "serve": "a checkpoint behind an OpenAI-compatible endpoint",
}
# The config a command reads: its own section and the shared ones (key prefixes; `lwm run`
# reads them all). Every command also reads the top-level keys (run_name, seed, ...).
SECTIONS = {
    "collect": ("collect", "policy", "data", "wandb", "cluster"),
    "ingest": ("ingest", "data"),
    "prepare": ("prepare", "data", "cpt.init", "model.path", "wandb", "cluster"),
    "cpt": ("cpt", "model", "data", "backend", "wandb", "cluster"),
    "sft": ("sft", "model", "data", "backend", "wandb", "cluster"),
    "rl": ("rl", "model", "data", "backend", "wandb", "cluster"),
    "eval": ("eval", "model", "data", "backend", "wandb", "cluster"),
    "serve": ("serve", "model", "data", "backend"),
}
# Subsections read only with one choice, folded into one line otherwise: key -> (the key that
# chooses, the value that reads it, the override that shows them).
FOLDS = {"backend.deepspeed": ("backend.name", "deepspeed", "backend=deepspeed"),
         "backend.megatron": ("backend.name", "megatron", "backend=megatron"),
         **{f"collect.{d}": ("data.domains", d, f"data={d}") for d in ("swe", "search", "mcp", "web", "os")}}
# Groups that are no section of the schema (a preset sets keys of several sections).
GROUP_EXTRA = {"plan": "the parallel layout for <backend>_<model>_<cluster>, picked when configs/plan has it"}


def main_help() -> str:
    keys, presets = schema_keys(), groups()
    width = max(map(len, COMMANDS))
    lines = ["usage: lwm COMMAND [KEY=VALUE ...] [-m] [--cfg job [--resolve]] [--dry-run] [--help]",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "config groups (GROUP=PRESET picks a preset of configs/GROUP/; GROUP.KEY=VALUE sets one key):"]
    gwidth = max(map(len, presets))
    for group, names in presets.items():
        if group in GROUP_EXTRA:
            lines.append(f"  {group:<{gwidth}}  {GROUP_EXTRA[group]} ({len(names)} presets)")
        else:
            lines.append(f"  {group:<{gwidth}}  {keys[group].meaning} ({', '.join(names)})")
    other = [k for k, v in keys.items() if v.section and "." not in k and k not in presets]
    lines.append(f"  {'':<{gwidth}}  without presets: {', '.join(other)}")
    lines += ["", "after the command:",
              "  KEY=VALUE    set a config key or pick a preset (cpt.lr=1e-4 model=qwen3_5_35b_a3b)",
              "  -m           a sweep: one job per combination of comma-separated values",
              "  --cfg job    print the composed config (add --resolve for every value resolved)",
              "  --dry-run    print the Slurm job script and the parallel layout; submit nothing",
              "  --help       the command's keys: type, default and meaning (lwm sft --help)",
              "", "README.md has the commands of every stage; docs/architecture.md how the code is laid out."]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "''"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    return text if len(text) <= 24 else text[:23] + "…"


def _compose(stage: str, overrides: list[str]):
    """The config as the command would compose it, unresolved (run_dir stays an interpolation)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lwm.config import register_configs
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=[f"stage={stage}", *overrides])
    return OmegaConf.to_container(cfg, resolve=False)


def _value(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _folded(key: str, tree: dict) -> bool:
    if key not in FOLDS:
        return False
    chooser, reads, _ = FOLDS[key]
    chosen = _value(tree, chooser)
    return reads != chosen and not (isinstance(chosen, list) and reads in chosen)


def _blocks(stage: str, keys: dict[str, Key], tree: dict) -> list[tuple[list[str], list]]:
    """(header lines, rows) per section the stage reads; a row is a key, or the line of a
    folded subsection."""
    prefixes = SECTIONS.get(stage) or tuple(k for k, v in keys.items() if v.section and "." not in k)
    presets = groups()
    blocks = {"": (["top level: the run and its folder"],
                   [k for k in keys.values() if "." not in k.name and not k.section and k.name != "stage"])}
    singles = [p for p in prefixes if not keys[p].section]
    for prefix in [p for p in prefixes if keys[p].section]:
        folded: list[str] = []
        for k in keys.values():
            if k.name != prefix and not k.name.startswith(prefix + "."):
                continue
            if any(k.name.startswith(f + ".") for f in folded):
                continue
            parent = k.name.rsplit(".", 1)[0] if "." in k.name else ""
            if k.section and _folded(k.name, tree):
                folded.append(k.name)
                chooser, reads, override = FOLDS[k.name]
                n = sum(1 for x in keys if x.startswith(k.name + "."))
                verb = "includes" if isinstance(_value(tree, chooser), list) else "is"
                blocks[parent][1].append(f"{k.name}.*: {n} keys, read when {chooser} {verb} {reads} "
                                         f"(`lwm {stage} {override} --help`)")
            elif k.section:
                header = [f"{k.name}.*  {k.meaning}"]
                if k.name in presets:
                    header.append(f"  presets: {k.name}={' | '.join(presets[k.name])}")
                blocks[k.name] = (header, [])
            else:
                blocks[parent][1].append(k)
    if singles:
        blocks["+"] = ([f"also read by {stage}:"], [keys[p] for p in singles])
    return list(blocks.values())


def stage_help(stage: str, overrides: list[str]) -> str:
    """The keys `stage` reads, with type, the default it would run with (presets and the
    overrides given applied) and meaning, one block per section."""
    keys = schema_keys()
    tree = _compose(stage, overrides)
    lines = [f"lwm {stage}: {COMMANDS[stage]}", "",
             f"usage: lwm {stage} [KEY=VALUE ...]   (values: what this command would run with)"]
    for header, rows in _blocks(stage, keys, tree):
        lines += ["", *header]
        table = [k for k in rows if isinstance(k, Key)]
        if table:
            kw = max(len(k.name) for k in table)
            tw = max(len(k.type) for k in table)
            vw = max(len(_fmt(_value(tree, k.name))) for k in table)
        for k in rows:
            if isinstance(k, str):
                lines.append(f"  {k}")
            else:
                value = _fmt(_value(tree, k.name))
                lines.append(f"  {k.name:<{kw}}  {k.type:<{tw}}  {value:<{vw}}  {k.meaning}")
    shown = SECTIONS.get(stage, ())
    others = [k for k, v in keys.items() if v.section and "." not in k and stage in SECTIONS
              and not any(p == k or p.startswith(k + ".") for p in shown)]
    if others:
        lines += ["", f"not read by {stage}: {', '.join(others)} (`lwm run --help` lists every key)"]
    return "\n".join(lines)
