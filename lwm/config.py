"""Typed configuration: every Hydra group maps to a dataclass here (structured configs).

An unknown key or a value of the wrong type fails when Hydra composes the config, naming the
key. Defaults here are the embedded CPU default; configs/ holds the named presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hydra.core.config_store import ConfigStore

from lwm.env_config import (McpEnvConfig, OsEnvConfig, SearchEnvConfig, SweEnvConfig,
                            WebEnvConfig)
from lwm.parallel_config import DeepSpeedConfig, MegatronConfig


@dataclass
class ModelConfig:
    name: str = "tiny_moe"
    path: str = ""                 # a local HF checkpoint to start from instead of building one
    arch: str = "qwen3_moe"        # qwen3_moe | qwen3_5_moe (hybrid linear attention)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 512
    moe_intermediate_size: int = 256
    num_experts: int = 8
    experts_per_token: int = 2
    router_aux_loss_coef: float = 0.001
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    attn_implementation: str = "sdpa"
    experts_implementation: str = "grouped_mm"
    vocab_size: int = 0            # 0 = the tokenizer's size; presets set the published (padded) size
    shared_expert_intermediate_size: int = 0   # 0 = no shared expert (Qwen3.5 has a gated one)
    # qwen3_5_moe only: every full_attention_interval-th layer is full (gated) attention, the
    # others Gated DeltaNet linear attention with these head counts and sizes.
    full_attention_interval: int = 4
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    partial_rotary_factor: float = 1.0


@dataclass
class DataConfig:
    name: str = "terminal"
    domains: list[str] = field(default_factory=lambda: ["terminal"])
    extra_domains: dict[str, str] = field(default_factory=dict)  # name -> "module:Class"
    trajectories: list[str] = field(default_factory=list)  # extra JSONL inputs to prepare
    mixture: dict[str, float] = field(default_factory=dict)  # domain or source -> weight (1 = as is)
    heldout_fraction: float = 0.15
    max_history: int = 2           # earlier turns kept in an SFT/RL/eval prompt
    tokenizer: str = ""            # a local tokenizer dir; empty = train one on the train split
    vocab_size: int = 4096
    seq_len: int = 1024            # CPT packing length


@dataclass
class BackendConfig:
    name: str = "hf"               # hf | deepspeed | megatron
    dtype: str = "float32"         # float32 | bfloat16
    num_threads: int = 0           # torch threads; 0 = all cores
    strategy: str = "ddp"          # hf with several ranks: ddp | fsdp (torch fully_shard)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    megatron: MegatronConfig = field(default_factory=MegatronConfig)


@dataclass
class ClusterConfig:
    name: str = "local"
    nodes: int = 1
    gpus_per_node: int = 0
    partition: str = ""
    account: str = ""
    time_minutes: int = 60
    qos: str = ""
    constraint: str = ""
    cpus_per_task: int = 16        # per node (split between the GPUs' tasks under the submitit launcher)
    mem_gb: int = 0                # 0 = the whole node (--mem=0)
    exclusive: bool = True
    requeue: bool = True           # preemption: USR1 signal_seconds before the end, save, requeue
    signal_seconds: int = 120
    master_port: int = 29500
    setup: list[str] = field(default_factory=list)  # shell lines run before the launch (module load ...)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class SandboxConfig:
    rootfs: str = ""               # a separate root (e.g. debootstrap); empty = host /usr read-only
    memory_mb: int = 1024
    max_pids: int = 256
    disk_mb: int = 64
    file_size_mb: int = 32
    cpu_seconds: int = 600


@dataclass
class PolicyConfig:
    name: str = "scripted"         # scripted | openai | replay
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.7
    max_tokens: int = 512
    timeout_s: float = 60.0
    replay_path: str = ""          # JSONL of recorded trajectories whose actions are re-executed


@dataclass
class CollectConfig:
    num_trajectories: int = 200
    workers: int = 2
    max_steps: int = 12
    width: int = 100
    height: int = 24
    settle_s: float = 0.05         # quiet time after an action before the screen is captured
    step_timeout_s: float = 15.0
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    swe: SweEnvConfig = field(default_factory=SweEnvConfig)
    search: SearchEnvConfig = field(default_factory=SearchEnvConfig)
    mcp: McpEnvConfig = field(default_factory=McpEnvConfig)
    web: WebEnvConfig = field(default_factory=WebEnvConfig)
    os: OsEnvConfig = field(default_factory=OsEnvConfig)


@dataclass
class IngestConfig:
    """`lwm ingest`: existing logs into trajectories (written to <run>/ingest/<name>.jsonl)."""
    format: str = ""               # agentworldbench | openai_chat | androidworld | androidcontrol
    path: str = ""                 # a file or folder in that format
    domain: str = ""               # the domain of the records, where the format does not say
    name: str = ""                 # output file name; empty = the format's name


@dataclass
class FilterConfig:
    """The recipe's trajectory filters; each one can be switched off for an ablation."""
    min_turns: int = 2
    undeclared_tools: bool = True      # mcp/swe: a call to a tool the record does not declare
    gui_failures: bool = True          # web/os/android episodes whose environment broke
    strip_empty_actions: bool = True
    skip_retry_cycles: bool = True     # garbage -> error -> retry: context only, never a target
    skip_gui_no_change: bool = True    # GUI turns that changed nothing: context only


@dataclass
class PrepareSlurmConfig:
    """Where prepare's datatrove jobs go with prepare.executor=slurm."""
    partition: str = ""
    time: str = "04:00:00"
    mem_per_cpu_gb: int = 4
    sbatch_args: dict[str, str] = field(default_factory=dict)


@dataclass
class PrepareConfig:
    input: str = ""                # trajectories JSONL; empty = the run's collect output
    executor: str = "local"        # local | slurm (datatrove executors)
    tasks: int = 0                 # datatrove tasks per parallel stage; 0 = by input size
    workers: int = 2               # tasks run at once by the local executor
    slurm: PrepareSlurmConfig = field(default_factory=PrepareSlurmConfig)
    redact: bool = True            # secrets and personal data, before anything is written
    dedup: bool = True             # MinHash (5-grams, 14x8 LSH): exact and near duplicates
    tokenizer_sample: int = 100000 # trajectories the tokenizer is trained on, at most
    decontaminate: list[str] = field(default_factory=list)  # eval JSONL files/dirs to exclude
    decontam_ngram: int = 13
    cpt_loss_mask: bool = True     # keep observation tokens in the CPT loss by turn type
    filters: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class TrainConfig:
    """Fields shared by the three training stages."""
    init: str = ""                 # checkpoint to start from; empty = the previous stage's output
    # One optimizer and schedule on every backend (lwm/train/optim.py): AdamW, linear warmup from 0,
    # cosine decay to min_lr_ratio * lr; warmup capped at max_warmup_fraction of max_steps.
    lr: float = 1e-3
    weight_decay: float = 0.0      # not on biases and norm weights
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    adam_eps: float = 1e-8
    warmup_steps: int = 10
    max_warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.1
    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    save_every: int = 50
    log_every: int = 10
    resume: str = "auto"           # auto | never | a checkpoint dir


@dataclass
class CptConfig(TrainConfig):
    max_steps: int = 150
    batch_size: int = 4
    lr: float = 2e-3


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint (vLLM, SGLang, `lwm serve`, a hosted API)."""
    base_url: str = ""             # empty = no endpoint
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8           # requests in flight
    max_retries: int = 3           # per request, with exponential backoff
    timeout_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 1024


@dataclass
class JudgeConfig(EndpointConfig):
    prompts: str = ""              # a folder of judge prompt templates; empty = lwm/endpoints/prompts
    baseline: str = ""             # eval reference mode: predictions.jsonl of the model compared against
    seed: int = 0                  # which side (A/B) holds the model's answer


@dataclass
class SftTeacherConfig(EndpointConfig):
    """Reasoning targets: k candidates per SFT query from a teacher (an OpenAI-compatible
    endpoint, or `path`, a local checkpoint), scored against the real observation."""
    path: str = ""                 # a local checkpoint as teacher, when base_url is empty
    samples: int = 4               # k candidates per query
    temperature: float = 1.0
    max_tokens: int = 512
    threshold: float = 0.6         # the best candidate's score must reach this to be kept
    rubric_weight: float = 0.9     # score = rubric * w + rule * (1 - w) with a judge, else rule
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # optional; empty base_url = rules only
    max_queries: int = 0           # SFT samples sent to the teacher, at most (0 = all)


@dataclass
class SftConfig(TrainConfig):
    max_steps: int = 150
    batch_size: int = 4            # packed rows of up to max_length tokens when packing
    lr: float = 5e-4
    max_length: int = 1024
    packing: bool = True
    train_history_observations: bool = False  # also put earlier observations in the loss
    teacher: SftTeacherConfig = field(default_factory=SftTeacherConfig)  # empty = observation only


@dataclass
class RlConfig(TrainConfig):
    # grpo | gspo. The keys below left null take the algorithm's documented value (rl/train.py
    # ALGORITHMS, from TRL's docs); a value set here wins.
    algorithm: str = "grpo"
    max_steps: int = 20
    log_every: int = 2
    lr: float = 1e-5
    batch_size: int = 8
    num_generations: int = 4
    temperature: float = 1.0
    max_prompt_length: int = 1024
    max_completion_length: int = 192
    beta: float = 0.0              # KL coefficient (KL is logged when > 0)
    epsilon: float | None = None   # lower clip of the ratio; null: grpo 0.2, gspo 3e-4
    epsilon_high: float | None = None  # upper clip; null: = rl.epsilon if set, else grpo 0.2, gspo 4e-4
    loss_type: str | None = None   # TRL's GRPOConfig.loss_type; null: grpo dapo, gspo grpo
    # Off-policy reuse: one generation feeds steps_per_generation micro-batches (TRL's unit: with
    # grad_accum > 1 an optimizer step takes grad_accum of them), each num_iterations times.
    steps_per_generation: int | None = None  # null: grpo grad_accum (on-policy), gspo 4 * grad_accum
    num_iterations: int = 1                  # passes over each micro-batch (TRL's mu)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # rubric judge; empty base_url = rules only
    rubric_weight: float = 0.9     # reward = rubric_weight * rubric + rule_weight * rule
    rule_weight: float = 0.1
    guard_penalty: float = 1.0     # subtracted (and rubric/rule zeroed) for judge-directed text
    judge_max_failure_rate: float = 0.5  # stop when more than this share of the last
    judge_failure_window: int = 64       # judge_failure_window judgements failed; 1.0 = never stop
    use_vllm: bool = False         # generate with vLLM (TRL) when installed
    vllm_mode: str = "colocate"    # colocate | server
    vllm_server_base_url: str = "" # server mode: a `trl vllm-serve` URL
    vllm_gpu_memory_utilization: float = 0.3


@dataclass
class EvalConfig:
    preset: str = ""               # set by configs/eval/<preset>.yaml (agentworldbench: checked at start)
    input: str = ""                # AgentWorldBench JSONL; empty = the run's held-out set
    checkpoint: str = ""           # empty = the run's latest trained stage
    max_samples: int = 64
    batch_size: int = 16
    max_new_tokens: int = 192
    temperature: float = 0.0
    compare_stages: bool = False   # score untrained/cpt/sft/rl side by side (lwm run sets it)
    controllability_samples: int = 4  # per domain, asked again under each perturbation; 0 = off
    mode: str = "rule"             # rule | judge | turing | reference
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)  # the model under test, served
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    plots: bool = True


@dataclass
class ServeConfig:
    """`lwm serve`: a checkpoint behind an OpenAI-compatible chat endpoint."""
    checkpoint: str = ""           # empty = the run's latest trained stage
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"          # auto (vLLM when installed, else hf) | vllm | hf
    model_name: str = ""           # the id clients send; empty = the checkpoint folder's name
    domain: str = ""               # system prompt for requests that bring none; empty = none added
    max_new_tokens: int = 1024     # when a request sets no max_tokens
    max_batch: int = 8             # hf backend: requests generated together


@dataclass
class WandbConfig:
    mode: str = "offline"          # offline | online | disabled
    project: str = "lwm"
    entity: str = ""


@dataclass
class LWMConfig:
    stage: str = "run"
    run_name: str = "default"
    run_dir: str = "${hydra:runtime.output_dir}"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    cpt: CptConfig = field(default_factory=CptConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def register_resolvers() -> None:
    """Resolvers our configs use; also registered on import, for a submitit job that re-composes
    the config without going through the CLI."""
    from omegaconf import OmegaConf

    def submitit_options(cluster):
        from lwm.cluster import submitit_options
        return submitit_options(cluster)
    # Slurm options derived from cluster.* (configs/hydra/launcher/lwm_slurm.yaml).
    OmegaConf.register_new_resolver("lwm.submitit_options", submitit_options, replace=True)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="lwm_schema", node=LWMConfig)
    register_resolvers()
    for group, node in [("model", ModelConfig), ("data", DataConfig), ("backend", BackendConfig),
                        ("cluster", ClusterConfig), ("policy", PolicyConfig),
                        ("collect", CollectConfig), ("ingest", IngestConfig),
                        ("prepare", PrepareConfig),
                        ("cpt", CptConfig), ("sft", SftConfig), ("rl", RlConfig),
                        ("eval", EvalConfig)]:
        cs.store(group=group, name=f"{group}_schema", node=node)


register_resolvers()
