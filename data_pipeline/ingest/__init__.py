"""`lwm ingest`: existing logs in a public format into schema-valid trajectories.

    summary = ingest(cfg, paths)   # cfg.ingest: format, path, domain, name

Writes <run>/ingest/<name>.jsonl (read by `prepare` with the collected trajectories),
<run>/ingest/quarantine/<name>.jsonl (records that could not convert, with file, record, field
and reason, redacted as prepare redacts; kept out of the folder `prepare` globs) and
<run>/ingest/metrics.json, and logs a summary. When no record survives it fails, naming the
quarantine file and the first reason. Input is read as bytes and decoded line by line: a line
that does not decode or parse is one quarantined record. Nothing is written unredacted: the
converted trajectories are redacted as prepare redacts them (data_pipeline/curate/redact.py;
`ingest.redact=false` keeps the logs' own text, secrets included, on disk).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from data_pipeline.curate.redact import redact_trajectory
from data_pipeline.ingest.common import Reject
from lwm.domains import domain_names, register_extra
from lwm.schema import MAX_DEPTH, Trajectory, TrajectoryError, check_values, validate
from lwm.tracking import Tracker

log = logging.getLogger("lwm.ingest")
FORMATS = {
    "agentworldbench": "data_pipeline.ingest.agentworldbench",
    "openai_chat": "data_pipeline.ingest.openai_chat",
    "androidworld": "data_pipeline.ingest.android:convert_androidworld",
    "androidcontrol": "data_pipeline.ingest.android:convert_androidcontrol",
}


def ingest(cfg, paths) -> dict:
    fmt = cfg.ingest.format
    if fmt not in FORMATS:
        raise ValueError(f"ingest.format '{fmt}' is unknown (formats: {', '.join(sorted(FORMATS))})")
    if not cfg.ingest.path:
        raise ValueError("ingest.path is empty: give the file or folder to import")
    register_extra(cfg.data.extra_domains)
    if cfg.ingest.domain and cfg.ingest.domain not in domain_names():
        raise ValueError(f"ingest.domain={cfg.ingest.domain} is not a registered domain (registered: "
                         f"{', '.join(domain_names())}); declare a domain of your own with "
                         f"data.extra_domains={{{cfg.ingest.domain}: package.module:ClassName}} or a "
                         "data preset that declares it (README: \"Your own domain\")")
    module, _, function = FORMATS[fmt].partition(":")   # "module" or "module:function"
    convert = getattr(importlib.import_module(module), function or "convert")
    out_dir = paths.stage("ingest")
    name = cfg.ingest.name or fmt
    out, bad = out_dir / f"{name}.jsonl", out_dir / "quarantine" / f"{name}.jsonl"
    bad.parent.mkdir(exist_ok=True)
    tracker = Tracker(cfg, "ingest", out_dir)
    counts, domains, seen, first_bad, redactions = Counter(), Counter(), set(), None, Counter()
    known = set(domain_names())
    # Written under temporary names and renamed at the end: prepare never sees half a file.
    with open(out.with_suffix(".tmp"), "w", encoding="utf-8") as good_f, \
            open(bad.with_suffix(".tmp"), "w", encoding="utf-8") as bad_f, \
            tqdm(desc=f"ingest {fmt}", unit="rec", dynamic_ncols=True) as bar:
        for item in convert(Path(cfg.ingest.path), cfg):
            bar.update()
            if not isinstance(item, Reject) and cfg.ingest.redact:
                item = redact_trajectory(item, redactions)
            reject = item if isinstance(item, Reject) else _write(item, good_f, cfg.ingest.path, known, seen)
            if reject is not None:  # redacted: a record's text may be in its reason
                reject = reject.redacted()
                bad_f.write(json.dumps(reject.as_dict(), ensure_ascii=False) + "\n")
                counts["quarantined"] += 1
                first_bad = first_bad or reject
                continue
            seen.add(item.id)
            counts["trajectories"] += 1
            counts["steps"] += len(item.steps)
            domains[item.domain] += 1
    os.replace(bad.with_suffix(".tmp"), bad)
    first = (f"{first_bad.source}, record {first_bad.record}, field {first_bad.field}: "
             f"{first_bad.reason}" if first_bad else "")
    if not counts["trajectories"]:  # an empty file would leave prepare nothing to say but "no data"
        out.with_suffix(".tmp").unlink()
        raise ValueError(f"ingest: none of the {counts['quarantined']} records of {cfg.ingest.path} "
                         f"became a trajectory; every one is in {bad}. The first: {first}")
    os.replace(out.with_suffix(".tmp"), out)
    log.info("ingest: %d trajectories (%d steps; domains %s) -> %s", counts["trajectories"],
             counts["steps"], dict(domains), out)
    if counts["quarantined"]:
        log.warning("ingest: %d records quarantined -> %s; the first: %s", counts["quarantined"],
                    bad, first)
    summary = {"format": fmt, "input": str(cfg.ingest.path), "output": str(out),
               "trajectories": counts["trajectories"], "steps": counts["steps"],
               "quarantined": counts["quarantined"], "domains": dict(domains),
               "redacted": cfg.ingest.redact, "redactions": dict(redactions)}
    tracker.log({k: v for k, v in summary.items() if isinstance(v, int)})
    return tracker.finish(summary)


def _write(traj: Trajectory, out, source: str, known: set, seen: set) -> Reject | None:
    """Write a converted trajectory, or say why it cannot be: not schema-valid, a duplicate id,
    or holding what no writer or parser downstream can take (lwm.schema.check_values)."""
    try:
        try:
            rec = asdict(traj)
        except RecursionError:
            raise TrajectoryError(f"nested deeper than {MAX_DEPTH} levels", "<record>", source,
                                  traj.id) from None
        validate(rec, source, traj.id, known)
        check_values(rec, source, traj.id)
        if traj.id in seen:
            raise TrajectoryError("duplicate id", "id", source, traj.id)
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")  # Trajectory.to_json, without a second asdict
    except TrajectoryError as e:
        return Reject(e.source, e.record, e.field, e.reason)
    except UnicodeEncodeError:  # encoded whole before anything is written
        return Reject(source, traj.id, "<record>", "unencodable text (a lone surrogate)")
    return None
