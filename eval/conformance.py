"""Check our eval against AgentWorldBench's own evaluation code, on any eval set:

    python -m eval.conformance --official <local copy of the AgentWorldBench repository> \
        [--input runs/default/prepare/eval] [--max-samples 0]

For every sample it runs the benchmark's `run_inference` and `run_judge` (eval/eval.py) with
clients that record what they are sent and answer with a fixed generation and a fixed judge
reply (no model and no judge are called: those two are stand-ins for remote endpoints), and
compares with what our eval builds for the same sample and the same generation: the world
model's chat messages, the judge's chat messages (ours with eval.judge.prompts=<repo>/prompts),
(which hold the prediction the judge is shown), an empty generation failing, and the scores read from the judge's reply. It prints one
line per difference and a summary, and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from eval.data import load_eval_set
from eval.run import judge_item
from lwm.endpoints.judge import DIMENSIONS, Prompts, judge_messages, parse_rubric
from lwm.endpoints.sample import view

# A reasoning model's reply: reasoning with a decoy block, then the answer.
GENERATION = ("<think>\nThe action runs; a decoy <predicted_observation>decoy</predicted_observation>"
              "\n</think>\n<predicted_observation>\n{reference}\n</predicted_observation>")
JUDGE_REPLY = ('Format looks right: 4/5 at first sight.\n<final_evaluation>\n```json\n{\n  "strengths": ["s"],'
               '\n  "weaknesses": ["w"],\n  "scores": {"format": 5, "factuality": 3.6, "consistency": "4/5",'
               ' "realism": 4, "quality": 2}\n}\n```\n</final_evaluation>')


class _Recorder:
    """An OpenAI client stand-in: records each request's messages, answers with `reply(i)`."""

    def __init__(self, reply):
        self.sent, self.reply = [], reply
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, model, messages, **_):
        self.sent.append(messages)
        text = self.reply(len(self.sent) - 1)
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])


def official_eval(repo: Path):
    """The benchmark's eval/eval.py, imported from the local copy (it imports its utils by name)."""
    sys.path.insert(0, str(repo / "eval"))
    try:
        spec = importlib.util.spec_from_file_location("agentworldbench_eval", repo / "eval" / "eval.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.pop(0)


def compare(repo: Path, records: list[dict]) -> list[str]:
    official = official_eval(repo)
    samples = [view(dict(r)) for r in records]
    generations = [GENERATION.format(reference=s.reference) if i % 5 else "" for i, s in enumerate(samples)]
    jobs = [json.loads(json.dumps(r)) for r in records]
    infer = _Recorder(lambda i: generations[i])
    official.run_inference(jobs, infer, "model", max_tokens=16, temperature=0.0)
    judge = _Recorder(lambda i: JUDGE_REPLY)
    official.run_judge(jobs, judge, "judge", max_tokens=16, temperature=0.0, max_retries=1)
    prompts, problems, judged = Prompts(repo / "prompts"), [], iter(judge.sent)
    for i, (s, job) in enumerate(zip(samples, jobs)):
        if infer.sent[i] != s.messages:
            problems.append(f"{s.id}: world model messages differ")
        item = judge_item(s, generations[i])
        if not generations[i]:
            if job.get("failed") != 1.0:
                problems.append(f"{s.id}: the benchmark did not fail an empty generation")
            continue
        theirs = next(judged)
        ours, _ = judge_messages(prompts, "rubric", item, 0)
        if ours != theirs:
            problems.append(f"{s.id}: judge messages differ")
        parsed = parse_rubric(JUDGE_REPLY)
        if [parsed[d] for d in DIMENSIONS] != [job[d] for d in DIMENSIONS]:
            problems.append(f"{s.id}: scores differ: ours {[parsed[d] for d in DIMENSIONS]}, "
                            f"the benchmark's {[job[d] for d in DIMENSIONS]}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, type=Path, help="local copy of the AgentWorldBench repository")
    ap.add_argument("--input", type=Path, default=Path("runs/default/prepare/eval"),
                    help="an eval file or a folder of *_test.jsonl (default: the default run's held-out sets)")
    ap.add_argument("--max-samples", type=int, default=0, help="per domain; 0 = all")
    args = ap.parse_args(argv)
    records = load_eval_set(args.input, args.max_samples)
    problems = compare(args.official, records)
    for p in problems:
        print(p)
    domains = sorted({str(r["task"]) for r in records})
    print(f"{len(records)} samples ({', '.join(domains)}): "
          + ("the same messages, predictions and scores as the benchmark's code" if not problems
             else f"{len(problems)} differences"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
