# Fixture standing in for the benchmark repository's eval/lwm_eval_utils/task_configs.py: the
# judge's user template is read from here as data. Same placeholders and brace escapes as the
# benchmark's template; the wording is the fixture's own.
SCORE_DIMENSIONS = ["format", "factuality", "consistency", "realism", "quality"]

JUDGE_USER_PROMPT = """{context}

{world_model_input}

{predicted_observation}

{ground_truth}

Fixture instructions: answer inside <final_evaluation></final_evaluation> as
```json
{{"scores": {{"format": <1-5>}}}}
```"""
