"""Curation steps of prepare: redaction, the recipe's filters, dedup, decontamination, turn types."""

import json
from collections import Counter

import numpy as np
import pytest

from data_pipeline.curate.dedup import Decontaminator
from data_pipeline.curate.filters import clean_turns, drop_reason
from data_pipeline.curate.redact import redact_text, redact_trajectory
from data_pipeline.curate.turn_types import KEEP, classify, token_keep_mask, turn_kinds, turn_stats
from lwm.config import FilterConfig
from lwm.schema import Step, Trajectory, load_trajectories
from tests.conftest import TRAJECTORIES, make_cfg


def traj(domain="terminal", steps=(("a", "o1"), ("b", "o2")), tools=(), tid="t", initial=""):
    return Trajectory(id=tid, domain=domain, source="test", tools=list(tools),
                      initial_observation=initial, steps=[Step(a, o) for a, o in steps])


SECRETS = {
    "sk-proj-Abc123def456ghi789jkl012mno": "<API_KEY>",
    "AKIAIOSFODNN7EXAMPLE": "<API_KEY>",
    "ghp_" + "a1B2" * 9: "<API_KEY>",
    "hf_" + "x" * 34: "<API_KEY>",
    "xoxb-1234567890-abcdefghij": "<API_KEY>",
    "alice.smith@corpmail.io": "<EMAIL>",  # example.com is a reserved domain, kept (test_redact)
}


@pytest.mark.parametrize("secret,placeholder", SECRETS.items())
def test_planted_secrets_are_redacted(secret, placeholder):
    counts = Counter()
    out = redact_text(f"config: {secret} end", counts)
    assert secret not in out and placeholder in out and sum(counts.values()) == 1


def test_structured_secrets_are_redacted():
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----"
    text = (f"{key}\ngit clone https://bob:hunter2pass@git.example.com/r.git\n"
            "export DB_PASSWORD=s3cr3tValue\nAuthorization: Bearer abcdefghijklmnopqrstuvwx")
    out = redact_text(text)
    assert "b3BlbnNzaC1" not in out and "<PRIVATE_KEY>" in out
    assert "hunter2pass" not in out and "https://bob:<PASSWORD>@git.example.com" in out
    assert "s3cr3tValue" not in out and "DB_PASSWORD=<SECRET>" in out
    assert "abcdefghijklmnop" not in out and "Bearer <TOKEN>" in out
    assert redact_text("ls -la /tmp && echo done") == "ls -la /tmp && echo done"


def test_redaction_covers_every_text_field():
    t = traj(steps=(("cat ~/.netrc", "password=topsecret99"),), initial="me@host.mailbox.org")
    t.task = "use key sk-ant-abcdefghijklmnopqrstuv"
    out = redact_trajectory(t)
    blob = json.dumps([out.task, out.initial_observation, out.steps[0].observation])
    assert "topsecret99" not in blob and "me@host" not in blob and "sk-ant-" not in blob


def test_min_turns_filter():
    cfg = FilterConfig(min_turns=2)
    assert drop_reason(traj(steps=(("a", "o"),)), cfg) == "too few turns"
    assert drop_reason(traj(), cfg) is None


def test_undeclared_tool_filter():
    tools = [{"name": "read_file", "description": "", "parameters": {}}]
    call = lambda name: json.dumps({"name": name, "arguments": {}})  # noqa: E731
    good = traj("swe", ((call("read_file"), "x"), (call("read_file"), "y")), tools)
    bad = traj("mcp", ((call("read_file"), "x"), (call("rm_rf"), "y")), tools)
    assert drop_reason(good, FilterConfig()) is None
    assert drop_reason(bad, FilterConfig()) == "undeclared tool"
    assert drop_reason(bad, FilterConfig(undeclared_tools=False)) is None


def test_gui_failure_filter():
    broken = traj("web", (("click('3')", "Error: net::ERR_CONNECTION_REFUSED"), ("noop()", "")))
    assert drop_reason(broken, FilterConfig()) == "gui environment failure"
    assert drop_reason(traj("web", (("click('3')", "[1] link 'Home'"), ("go_back()", "[2] x"))),
                       FilterConfig()) is None


def test_empty_actions_stripped_and_gui_no_change_kept_as_context():
    t = traj("web", (("click('1')", "A"), ("", "A"), ("scroll(0, 100)", "A"), ("click('2')", "B")),
             initial="start")
    out, sample, stats = clean_turns(t, FilterConfig())
    assert [s.action for s in out.steps] == ["click('1')", "scroll(0, 100)", "click('2')"]
    assert sample == [True, False, True] and stats["gui_no_change"] == 1
    assert stats["empty_actions"] == 1


def test_retry_cycle_is_context_not_target():
    # Malformed in the terminal's grammar (not a keystroke list), answered by a shell error.
    t = traj(steps=(("garbage", "bash: garbage: command not found"), ('[{"keystrokes": "ls"}]', "f.txt"),
                    ('[{"keystrokes": "pwd"}]', "/home")))
    out, sample, stats = clean_turns(t, FilterConfig())
    assert len(out.steps) == 3 and sample == [False, True, True] and stats["retry_turns"] == 1
    _, sample, _ = clean_turns(t, FilterConfig(skip_retry_cycles=False))
    assert sample == [True, True, True]
    # A malformed action the environment answered without an error is a real turn.
    ok = traj(steps=(("garbage", "f.txt"), ('[{"keystrokes": "pwd"}]', "/home")))
    assert clean_turns(ok, FilterConfig())[1] == [True, True]


def test_exact_and_near_duplicates_are_removed(tmp_path):
    from data_pipeline.prepare import prepare
    from lwm.tracking import RunPaths
    real = load_trajectories(TRAJECTORIES)
    a = real[0]
    exact = Trajectory(**{**a.__dict__, "id": "exact-copy"})
    last = a.steps[-1]
    near = Trajectory(**{**a.__dict__, "id": "near-copy",
                         "steps": a.steps[:-1] + [Step(last.action, last.observation + " x")]})
    src = tmp_path / "dups.jsonl"
    src.write_text("".join(t.to_json() + "\n" for t in real + [exact, near]))
    run = tmp_path / "run"
    manifest = prepare(make_cfg(run, f"prepare.input={src}"), RunPaths(run))
    assert manifest["records"]["filter_reasons"]["duplicate"] == 2
    kept = {json.loads(l)["id"] for name in ("train", "heldout")
            for l in (run / "prepare" / f"{name}.jsonl").read_text().splitlines()}
    assert a.id in kept and not {"exact-copy", "near-copy"} & kept
    assert len(kept) == len(real)  # different tasks are not near duplicates of each other


# sha256 (first 16 hex) of datatrove 0.10.1's MinhashDedupSignature.get_signature, over its own
# get_shingles, of each text (None: no 5-gram), computed with datatrove's code and written here.
MINHASH_TEXTS = {
    "terminal\nuser@sandbox:~$ ls -la\n  total 8\ndrwxr-xr-x 2 user user 4096 .\n": "31a70a2de3d88127",
    "  h\u00e9llo\u00a0w\u00f6rld \U0001f389\tcaf\u00e9\r\nna\u00efve  r\u00e9sum\u00e9\u2003em space one two "
    "three four five six": "9382e075a3cbce7a",
    "one two three four": None, "one two three four five": "2afd56164d5e6d22", "": None, "   \n\t ": None,
    "web\n[1] button 'Sign in' [2] link 'Help' [3] textbox 'Search' " * 20: "1f34f8189910f79b",
    # separators str.split() splits on (\x1c-\x1f, NEL, line/paragraph separators), and one it does not
    "a\x1cb\x1dc\x1ed\x1ff\x85g\u2028h\u2029i\x0bj\x0ck \u3000l\u200bm": "a635930334ffa971",
}


def test_minhash_signatures_are_datatroves():
    """CurateSignatures' shingles and signatures equal datatrove's own, bit for bit, including
    where a permuted hash lands on or past the Mersenne modulus (the fold's correction)."""
    import hashlib

    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    from data_pipeline.engine import MINHASH, CurateSignatures, WhitespaceWords
    sig = CurateSignatures(output_folder="unused", config=MINHASH, language=WhitespaceWords())
    for text, expected in MINHASH_TEXTS.items():
        shingles = sig.get_shingles(text)
        theirs = MinhashDedupSignature.get_shingles(sig, text)
        assert shingles.dtype == theirs.dtype and shingles.shape == theirs.shape
        assert (shingles == theirs).all()
        if expected is None:
            assert shingles.size == 0
            continue
        signature = sig.get_signature(shingles)
        assert signature == MinhashDedupSignature.get_signature(sig, shingles)
        assert hashlib.sha256(repr(signature).encode()).hexdigest()[:16] == expected
    # shingles x with a*x + b = p + k (mod 2**64) for an odd a, and more beside them
    a, b = (v[0].tolist() for v in sig.parameters)
    p, j = (1 << 61) - 1, next(i for i, v in enumerate(a) if v % 2)
    inverse = pow(a[j], -1, 1 << 64)
    wrap = [((p + k - b[j]) * inverse) % (1 << 64) for k in (0, 1, 7, 2 ** 61, 2 ** 62)]
    for extra in ([], [1, 2, 3], wrap):
        shingles = np.array(wrap + extra, dtype=np.uint64).reshape((-1, 1))
        assert sig.get_signature(shingles) == MinhashDedupSignature.get_signature(sig, shingles)


def test_decontamination_by_id_and_ngrams(tmp_path):
    from lwm import render
    from lwm.domains import get_domain
    real = load_trajectories(TRAJECTORIES)
    bench = tmp_path / "terminal_test.jsonl"
    bench.write_text(json.dumps(render.agentworldbench_record(get_domain("terminal"), real[0], 2)) + "\n")
    dec = Decontaminator([bench], n=13)
    assert dec.reason(real[0]) == "eval id"
    leaked = Trajectory(**{**real[0].__dict__, "id": "renamed"})
    assert dec.reason(leaked) == "eval n-gram overlap"
    assert dec.reason(real[-1]) is None


def test_turn_type_categories():
    cases = {
        "echo": ("echo hello world from lwm", "hello world from lwm"),
        "boilerplate": ("save the file now", ""),
        "transform": ("sort these words banana apple cherry", "apple banana cherry words"),
        "retrieval": ("cat README.md", " ".join(f"line{i} text{i}" for i in range(40))),
        "expansion": ("describe apples please", "apples are red fruits growing on trees in orchards"),
        "action": ("rm -rf build dist cache", "removed 3 directories"),
    }
    for expected, (action, observation) in cases.items():
        assert classify(turn_stats(action, observation)) == expected, expected
    assert set(KEEP) == {"retrieval", "expansion", "action", "transform", "boilerplate", "echo", "other"}
    assert (KEEP["retrieval"], KEEP["transform"], KEEP["boilerplate"], KEEP["echo"]) == (1.0, 0.5, 0.1, 0.05)


def test_turn_kinds_classify_every_turn_as_turn_stats_does():
    """turn_kinds (render finds each text's words once) agrees with classify(turn_stats(...))
    turn by turn, the previous observation being the initial one for turn 1."""
    for t in load_trajectories(TRAJECTORIES):
        previous = [t.initial_observation] + [s.observation for s in t.steps]
        want = [classify(turn_stats(s.action, s.observation, previous[i])) for i, s in enumerate(t.steps)]
        assert turn_kinds(t.initial_observation, t.steps) == want
    echo = traj(steps=(("echo hi there", "hi there"), ("ls", "hi there")), initial="hi there")
    assert turn_kinds(echo.initial_observation, echo.steps) == [
        classify(turn_stats("echo hi there", "hi there", "hi there")),
        classify(turn_stats("ls", "hi there", "hi there"))]


def test_words_are_found_as_the_pattern_finds_them_then_lowered():
    """The ASCII fast path (lower, then find) gives each word of [A-Za-z0-9_]+ lower-cased, as
    finding then lowering does; texts with characters that lower into ASCII (the Kelvin sign,
    dotted capital I) take the slow path and agree too."""
    import random
    import re

    from data_pipeline.curate.turn_types import _lowered, words
    pattern = re.compile(r"[A-Za-z0-9_]+")
    chars = [chr(i) for i in range(32, 127)] + ["\u212a", "\u0130", "\u01c4", "é", "ß", "\n", "\t"]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 60)))
        want = [w.lower() for w in pattern.findall(text)]
        assert _lowered(text) == want and words(text) == set(want), text
    assert _lowered("Kelvin \u212a") == ["kelvin"] and _lowered("Abc_1 DEF") == ["abc_1", "def"]


def test_token_keep_mask_fraction_and_determinism():
    mask = token_keep_mask(200, 0.1, "t:3")
    assert sum(mask) == 20 and mask == token_keep_mask(200, 0.1, "t:3")
    assert mask != token_keep_mask(200, 0.1, "t:4")
    assert max(i for i, m in enumerate(mask) if m) > 100  # spread, not a prefix


def test_prepare_ships_loss_mask_and_reconciles(prepared_run):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    prefix = prepared_run / "prepare" / "cpt" / "train"
    tokens, mask = IndexedDataset(str(prefix)), IndexedDataset(str(prefix) + "_lossmask")
    assert len(tokens) == len(mask)
    assert all(len(tokens[i]) == len(mask[i]) for i in range(len(tokens)))
    kept = np.concatenate([mask[i] for i in range(len(mask))]).mean()
    assert 0.5 < kept < 1.0  # some observation tokens are thinned, most tokens are trained
    manifest = json.loads((prepared_run / "prepare" / "manifest.json").read_text())
    r = manifest["records"]
    assert r["in"] == r["kept"] + r["quarantined"] + r["filtered"]
    assert manifest["cpt"]["train"]["real_token_fraction"] >= 0.95


def test_ablation_switches_curation_off(tmp_path):
    from data_pipeline.prepare import prepare
    from lwm.tracking import RunPaths
    cfg = make_cfg(tmp_path, f"prepare.input={TRAJECTORIES}", "prepare.dedup=false",
                   "prepare.redact=false", "prepare.cpt_loss_mask=false", "prepare.filters.min_turns=1")
    manifest = prepare(cfg, RunPaths(tmp_path))
    assert manifest["records"]["filtered"] == 0 and manifest["curation"]["redactions"] == {}
    assert manifest["cpt"]["train"]["turn_types"] == {}


def test_mixture_weights_repeat_or_thin_domains(tmp_path):
    from data_pipeline.prepare import mixture_copies, prepare
    from lwm.tracking import RunPaths
    t = traj()
    assert mixture_copies(t, {}, 0) == 1 and mixture_copies(t, {"terminal": 3.0}, 0) == 3
    draws = [mixture_copies(traj(tid=f"t{i}"), {"terminal": 0.25}, 0) for i in range(2000)]
    assert 0.2 < sum(draws) / len(draws) < 0.3
    run = tmp_path / "run"
    manifest = prepare(make_cfg(run, f"prepare.input={TRAJECTORIES}", "+data.mixture.terminal=2.0"),
                       RunPaths(run))
    assert manifest["mixture"]["train_copies"]["terminal"] == 2 * manifest["split"]["train"]
