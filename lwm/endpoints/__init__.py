"""What the stages share to talk to models: the OpenAI-compatible chat client (client), the
LLM judge with its rubric and guard (judge), local batched generation (generate), and the view
of an AgentWorldBench-layout sample that eval and the judge read (sample)."""
