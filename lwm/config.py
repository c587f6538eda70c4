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
from lwm.schema import MAX_RECORD_BYTES


@dataclass
class ModelConfig:
    name: str = "tiny_moe"         # the preset's name, for labels and logs
    path: str = ""                 # a local HF checkpoint to start from instead of building one
    arch: str = "qwen3_moe"        # qwen3_moe | qwen3_5_moe (hybrid linear attention)
    hidden_size: int = 256         # width of the residual stream
    num_layers: int = 4            # transformer layers
    num_heads: int = 4             # attention (query) heads
    num_kv_heads: int = 2          # key/value heads (grouped-query attention)
    head_dim: int = 64             # size of one attention head
    intermediate_size: int = 512   # MLP width of a dense (expert-free) layer
    moe_intermediate_size: int = 256  # MLP width of one expert
    num_experts: int = 8           # routed experts per MoE layer
    experts_per_token: int = 2     # experts each token is routed to (top-k)
    router_aux_loss_coef: float = 0.001  # weight of the router's load-balancing loss
    max_position_embeddings: int = 4096  # longest sequence the positions are set up for
    rope_theta: float = 10000.0    # base of the rotary position embedding
    tie_word_embeddings: bool = True  # input embedding and output head share weights
    attn_implementation: str = "sdpa_packed"  # HF attention: sdpa_packed (sdpa per packed sample) | sdpa | eager | flash_attention_2
    experts_implementation: str = "grouped_mm"  # HF experts kernel: grouped_mm | eager
    vocab_size: int = 0            # 0 = the tokenizer's size; presets set the published (padded) size
    shared_expert_intermediate_size: int = 0   # 0 = no shared expert (Qwen3.5 has a gated one)
    # qwen3_5_moe only: every full_attention_interval-th layer is full (gated) attention, the
    # others Gated DeltaNet linear attention with these head counts and sizes.
    full_attention_interval: int = 4  # every n-th layer full attention, the others linear
    linear_num_key_heads: int = 16  # key heads of a linear-attention layer
    linear_num_value_heads: int = 32  # value heads of a linear-attention layer
    linear_key_head_dim: int = 128  # size of a linear-attention key head
    linear_value_head_dim: int = 128  # size of a linear-attention value head
    partial_rotary_factor: float = 1.0  # share of a head's dimensions that get rotary positions


@dataclass
class DataConfig:
    name: str = "terminal"         # the preset's name, for labels and logs
    domains: list[str] = field(default_factory=lambda: ["terminal"])  # the run's domains
    extra_domains: dict[str, str] = field(default_factory=dict)  # name -> "module:Class"
    trajectories: list[str] = field(default_factory=list)  # extra JSONL inputs to prepare
    mixture: dict[str, float] = field(default_factory=dict)  # domain or source -> weight (1 = as is)
    heldout_fraction: float = 0.15  # share of trajectories held out (held-out loss, eval sets)
    max_history: int = 2           # earlier turns kept in an SFT/RL/eval prompt
    tokenizer: str = ""            # a local tokenizer dir; empty = train one on the train split
    vocab_size: int = 4096         # vocabulary of the tokenizer trained when data.tokenizer is empty
    seq_len: int = 1024            # CPT packing length


@dataclass
class BackendConfig:
    name: str = "hf"               # hf | deepspeed | megatron
    dtype: str = "float32"         # float32 | bfloat16
    num_threads: int = 0           # torch threads; 0 = all cores
    strategy: str = "ddp"          # hf with several ranks: ddp | fsdp (torch fully_shard)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)  # read with backend.name=deepspeed
    megatron: MegatronConfig = field(default_factory=MegatronConfig)  # read with backend.name=megatron


@dataclass
class ClusterConfig:
    name: str = "local"            # the preset's name, for labels and logs
    nodes: int = 1                 # Slurm nodes per job
    gpus_per_node: int = 0         # GPUs per node; 0 = this machine, no Slurm job
    partition: str = ""            # Slurm partition; empty = the cluster's default
    account: str = ""              # Slurm account; empty = none given
    time_minutes: int = 60         # the job's time limit
    qos: str = ""                  # Slurm quality of service; empty = none given
    constraint: str = ""           # Slurm node features (--constraint); empty = any
    cpus_per_task: int = 16        # per node (split between the GPUs' tasks under the submitit launcher)
    mem_gb: int = 0                # 0 = the whole node (--mem=0)
    exclusive: bool = True         # whole nodes (--exclusive)
    requeue: bool = True           # preemption: USR1 signal_seconds before the end, save, requeue
    signal_seconds: int = 120      # how long before the time limit USR1 arrives
    master_port: int = 29500       # torchrun's rendezvous port
    setup: list[str] = field(default_factory=list)  # shell lines run before the launch (module load ...)
    env: dict[str, str] = field(default_factory=dict)  # environment variables exported in the job script
    wait: bool = True              # `-m` on Slurm: block until every job ends; false = print the job ids, return


@dataclass
class SandboxConfig:
    rootfs: str = ""               # a separate root (e.g. debootstrap); empty = host /usr read-only
    memory_mb: int = 1024          # address space per process (prlimit --as)
    max_pids: int = 256            # processes at once (pids cgroup): fork bombs stop here
    disk_mb: int = 64              # the writable tmpfs ($HOME, /tmp)
    file_size_mb: int = 32         # largest file a process may write
    cpu_seconds: int = 600         # CPU time per process (prlimit --cpu)


@dataclass
class PolicyConfig:
    name: str = "scripted"         # scripted | openai | replay
    base_url: str = "http://127.0.0.1:8000/v1"  # openai policy: its endpoint
    model: str = ""                # openai policy: the model name sent
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key
    temperature: float = 0.7       # sampling temperature of the actions
    max_tokens: int = 512          # longest action, in tokens
    timeout_s: float = 60.0        # per request
    replay_path: str = ""          # JSONL of recorded trajectories whose actions are re-executed


@dataclass
class CollectConfig:
    num_trajectories: int = 200    # episodes collected per domain
    workers: int = 2               # episodes run at once
    max_steps: int = 12            # actions per episode, at most
    width: int = 100               # terminal columns
    height: int = 24               # terminal rows
    settle_s: float = 0.05         # quiet time after an action before the screen is captured
    step_timeout_s: float = 15.0   # an action still running after this is cut off
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)  # the terminal's sandbox limits
    swe: SweEnvConfig = field(default_factory=SweEnvConfig)  # the swe environment
    search: SearchEnvConfig = field(default_factory=SearchEnvConfig)  # the search environment
    mcp: McpEnvConfig = field(default_factory=McpEnvConfig)  # the mcp environment
    web: WebEnvConfig = field(default_factory=WebEnvConfig)  # the web environment
    os: OsEnvConfig = field(default_factory=OsEnvConfig)  # the os (desktop) environment


@dataclass
class IngestConfig:
    """`lwm ingest`: existing logs into trajectories (written to <run>/ingest/<name>.jsonl)."""
    format: str = ""               # agentworldbench | openai_chat | androidworld | androidcontrol
    path: str = ""                 # a file or folder in that format
    domain: str = ""               # the domain of the records, where the format does not say
    name: str = ""                 # output file name; empty = the format's name
    redact: bool = True            # redact secrets and personal data before writing; false writes the logs' secrets to disk


@dataclass
class FilterConfig:
    """The recipe's trajectory filters; each one can be switched off for an ablation."""
    min_turns: int = 2             # trajectories with fewer turns are dropped
    undeclared_tools: bool = True      # mcp/swe: a call to a tool the record does not declare
    gui_failures: bool = True          # web/os/android episodes whose environment broke
    strip_empty_actions: bool = True  # turns with an empty action are removed
    skip_retry_cycles: bool = True     # garbage -> error -> retry: context only, never a target
    skip_gui_no_change: bool = True    # GUI turns that changed nothing: context only


@dataclass
class PrepareSlurmConfig:
    """Where prepare's datatrove jobs go with prepare.executor=slurm."""
    partition: str = ""            # Slurm partition; empty = the cluster's default
    time: str = "04:00:00"         # a job's time limit (HH:MM:SS)
    mem_per_cpu_gb: int = 4        # memory per CPU of a task
    sbatch_args: dict[str, str] = field(default_factory=dict)  # extra #SBATCH options (name -> value)


@dataclass
class PrepareConfig:
    input: str = ""                # trajectories JSONL; empty = the run's collect output, if any (+ ingest/*.jsonl)
    executor: str = "local"        # local | slurm (datatrove executors)
    tasks: int = 0                 # datatrove tasks per parallel stage; 0 = by input size
    workers: int = 2               # tasks run at once by the local executor
    slurm: PrepareSlurmConfig = field(default_factory=PrepareSlurmConfig)  # read with prepare.executor=slurm
    redact: bool = True            # secrets and personal data, before anything (quarantine too) is written
    max_record_bytes: int = MAX_RECORD_BYTES  # longest input line; a longer one is quarantined unread
    quarantine_raw: bool = False   # keep quarantined lines' bytes too (base64): writes secrets unredacted
    dedup: bool = True             # MinHash (5-grams, 14x8 LSH): exact and near duplicates
    tokenizer_sample: int = 100000 # trajectories the tokenizer is trained on, at most
    decontaminate: list[str] = field(default_factory=list)  # eval JSONL files/dirs to exclude
    decontam_ngram: int = 13       # n-gram length of a decontamination match
    cpt_loss_mask: bool = True     # keep observation tokens in the CPT loss by turn type
    filters: FilterConfig = field(default_factory=FilterConfig)  # the recipe's trajectory filters


@dataclass
class TrainConfig:
    """Fields shared by the three training stages."""
    init: str = ""                 # checkpoint to start from; empty = the previous stage's output
    # One optimizer and schedule on every backend (lwm/train/optim.py): AdamW, linear warmup from 0,
    # cosine decay to min_lr_ratio * lr; warmup capped at max_warmup_fraction of max_steps.
    lr: float = 1e-3               # peak learning rate
    weight_decay: float = 0.0      # not on biases and norm weights
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    adam_eps: float = 1e-8         # AdamW epsilon
    warmup_steps: int = 10         # linear warmup from 0 to lr over this many steps
    max_warmup_fraction: float = 0.1  # warmup capped at this share of max_steps
    min_lr_ratio: float = 0.1      # cosine decay ends at this fraction of lr
    max_steps: int = 100           # optimizer steps of the whole run
    batch_size: int = 8            # rows per micro-batch on each data-parallel rank
    grad_accum: int = 1            # micro-batches per optimizer step
    max_grad_norm: float = 1.0     # gradient clipping norm
    save_every: int = 50           # steps between checkpoints
    log_every: int = 10            # steps between logged metrics
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
    model: str = ""                # the model name sent with each request
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key
    concurrency: int = 8           # requests in flight
    max_retries: int = 3           # per request, with exponential backoff
    timeout_s: float = 120.0       # per request
    temperature: float = 0.0       # sampling temperature
    max_tokens: int = 1024         # longest answer, in tokens


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
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # scores candidates; empty base_url = rules only
    max_queries: int = 0           # SFT samples sent to the teacher, at most (0 = all)


@dataclass
class SftConfig(TrainConfig):
    max_steps: int = 150
    batch_size: int = 4            # packed rows of up to max_length tokens when packing
    lr: float = 5e-4
    max_length: int = 1024         # longest sample in tokens (oldest history turns dropped to fit)
    packing: bool = True           # pack samples into rows of max_length (padding-free)
    gradient_checkpointing: str = "auto"  # recompute activations in backward: auto (from 1B params) | true | false
    train_history_observations: bool = False  # also put earlier observations in the loss
    teacher: SftTeacherConfig = field(default_factory=SftTeacherConfig)  # reasoning targets; empty = none


@dataclass
class RlConfig(TrainConfig):
    # grpo | gspo. The keys below left null take the algorithm's documented value (rl/train.py
    # ALGORITHMS, from TRL's docs); a value set here wins.
    algorithm: str = "grpo"        # grpo | gspo
    max_steps: int = 20
    log_every: int = 2
    lr: float = 1e-5
    batch_size: int = 8
    num_generations: int = 4       # completions sampled per prompt (the group)
    temperature: float = 1.0       # sampling temperature of the rollouts
    max_prompt_length: int = 1024  # prompts longer than this (tokens) are left out
    max_completion_length: int = 192  # longest completion, in tokens
    beta: float = 0.0              # KL coefficient (KL is logged when > 0)
    gradient_checkpointing: str = "auto"  # recompute activations in backward: auto (from 1B params) | true | false
    epsilon: float | None = None   # lower clip of the ratio; null: grpo 0.2, gspo 3e-4
    epsilon_high: float | None = None  # upper clip; null: = rl.epsilon if set, else grpo 0.2, gspo 4e-4
    loss_type: str | None = None   # TRL's GRPOConfig.loss_type; null: grpo dapo, gspo grpo
    # Off-policy reuse: one generation feeds steps_per_generation micro-batches (TRL's unit: with
    # grad_accum > 1 an optimizer step takes grad_accum of them), each num_iterations times.
    steps_per_generation: int | None = None  # null: grpo grad_accum (on-policy), gspo 4 * grad_accum
    num_iterations: int = 1                  # passes over each micro-batch (TRL's mu)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # rubric judge; empty base_url = rules only
    rubric_weight: float = 0.9     # reward = rubric_weight * rubric + rule_weight * rule
    rule_weight: float = 0.1       # weight of the rule reward
    guard_penalty: float = 1.0     # subtracted (and rubric/rule zeroed) for judge-directed text
    judge_max_failure_rate: float = 0.5  # stop above this share of failed judgements; 1.0 = never
    judge_failure_window: int = 64       # the last judgements that share is taken over
    use_vllm: bool = False         # generate with vLLM (TRL) when installed
    vllm_mode: str = "colocate"    # colocate | server
    vllm_server_base_url: str = "" # server mode: a `trl vllm-serve` URL
    vllm_gpu_memory_utilization: float = 0.3  # colocate mode: share of GPU memory vLLM takes
    # Held-out check (rl/validation.py): prompts kept out of training, answered greedily and scored
    # with this stage's reward before the first step and after the last (rl/metrics.json `held_out`).
    validation_prompts: int = 0    # 0 = no check
    keep_best: bool = False        # keep the starting weights when the final ones do not score higher there


@dataclass
class EvalConfig:
    preset: str = ""               # set by configs/eval/<preset>.yaml (agentworldbench: checked at start)
    input: str = ""                # AgentWorldBench JSONL; empty = the run's held-out set
    checkpoint: str = ""           # empty = the run's latest trained stage
    max_samples: int = 64          # samples scored per domain, at most
    batch_size: int = 16           # samples generated together
    max_new_tokens: int = 192      # longest prediction, in tokens
    temperature: float = 0.0       # sampling temperature; 0 = greedy
    prompt_format: str = "auto"    # chat | document (the CPT document up to the observation) | auto: document for init and cpt
    max_prompt_tokens: int = 0     # longest prompt; 0 = the length the stage trained at (data.seq_len, sft.max_length) less max_new_tokens
    bootstrap: int = 1000          # resamples of the 95% confidence intervals (seeded by `seed`); 0 = none
    compare_stages: bool = False   # score untrained/cpt/sft/rl side by side (lwm run sets it)
    controllability_samples: int = 4  # per domain, asked again under each perturbation; 0 = off
    mode: str = "rule"             # rule | judge | turing | reference
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)  # the model under test, served
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # the judge of modes judge, turing and reference
    plots: bool = True             # plots beside report.md


@dataclass
class ServeConfig:
    """`lwm serve`: a checkpoint behind an OpenAI-compatible chat endpoint."""
    checkpoint: str = ""           # empty = the run's latest trained stage
    host: str = "127.0.0.1"        # address to listen on
    port: int = 8000               # port to listen on
    backend: str = "auto"          # auto (vLLM when installed, else hf) | vllm | hf
    model_name: str = ""           # the id clients send; empty = the checkpoint folder's name
    domain: str = ""               # system prompt for requests that bring none; empty = none added
    max_new_tokens: int = 1024     # when a request sets no max_tokens
    max_batch: int = 8             # hf backend: requests generated together


@dataclass
class WandbConfig:
    mode: str = "offline"          # offline | online | disabled
    project: str = "lwm"           # wandb project
    entity: str = ""               # wandb team or user; empty = the default


@dataclass
class ReuseConfig:
    """Stage outputs taken from elsewhere instead of run here: the folder of another run's stage
    (e.g. runs/base/cpt), linked into this run as <run>/<stage> (launch/share.py)."""
    collect: str = ""              # a collect/ folder (its trajectories)
    ingest: str = ""               # an ingest/ folder
    prepare: str = ""              # a prepare/ folder (shards, tokenizer, eval sets)
    cpt: str = ""                  # a cpt/ folder (its final/ model)
    sft: str = ""                  # an sft/ folder
    rl: str = ""                   # an rl/ folder


@dataclass
class LWMConfig:
    stage: str = "run"             # the command being run (set by `lwm STAGE`)
    run_name: str = "default"      # names the run's folder, runs/<run_name>
    run_dir: str = "${hydra:runtime.output_dir}"  # where the stages write: runs/<run_name>
    seed: int = 0                  # every stage's random seed (the held-out split too)
    model: ModelConfig = field(default_factory=ModelConfig)  # the network: architecture and sizes
    data: DataConfig = field(default_factory=DataConfig)  # domains, mixture, split, tokenizer
    backend: BackendConfig = field(default_factory=BackendConfig)  # the training engine and its knobs
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # this machine, or Slurm nodes and GPUs
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # the agent acting in collect
    collect: CollectConfig = field(default_factory=CollectConfig)  # trajectories from real environments
    ingest: IngestConfig = field(default_factory=IngestConfig)  # existing logs into trajectories
    prepare: PrepareConfig = field(default_factory=PrepareConfig)  # curate, dedup, split, tokenize
    cpt: CptConfig = field(default_factory=CptConfig)  # continued pretraining
    sft: SftConfig = field(default_factory=SftConfig)  # next-state prediction fine-tuning
    rl: RlConfig = field(default_factory=RlConfig)  # GRPO/GSPO, judge + rule reward
    eval: EvalConfig = field(default_factory=EvalConfig)  # scoring checkpoints or endpoints
    serve: ServeConfig = field(default_factory=ServeConfig)  # a checkpoint as a chat endpoint
    wandb: WandbConfig = field(default_factory=WandbConfig)  # experiment tracking
    reuse: ReuseConfig = field(default_factory=ReuseConfig)  # stages taken from another run


def register_resolvers() -> None:
    """Resolvers our configs use; also registered on import, for a submitit job that re-composes
    the config without going through the CLI."""
    from omegaconf import OmegaConf

    def submitit_options(cluster):
        from lwm.cluster import submitit_options
        return submitit_options(cluster)
    # Slurm options derived from cluster.* (configs/hydra/launcher/lwm_slurm.yaml).
    OmegaConf.register_new_resolver("lwm.submitit_options", submitit_options, replace=True)

    def submitit_setup(cluster):
        from lwm.cluster import submitit_setup
        return None if cluster is None else submitit_setup(cluster)
    OmegaConf.register_new_resolver("lwm.submitit_setup", submitit_setup, replace=True)


def _open_dicts(node):
    """A schema node whose user-keyed dicts (data.extra_domains, data.mixture, cluster.env, ...)
    take new keys from a plain override, `data.extra_domains={tickets: pkg.mod:Cls}`: Hydra merges
    an override into the dict, which struct mode would refuse for a key the default lacks. Their
    values keep their declared type; every other node stays closed to unknown keys."""
    from omegaconf import OmegaConf
    for key in node:
        child = node._get_node(key)
        if OmegaConf.is_dict(child):
            if OmegaConf.get_type(child) is dict:
                OmegaConf.set_struct(child, False)
            else:
                _open_dicts(child)
    return node


def register_configs() -> None:
    from omegaconf import OmegaConf
    cs = ConfigStore.instance()
    cs.store(name="lwm_schema", node=_open_dicts(OmegaConf.structured(LWMConfig)))
    register_resolvers()
    for group, node in [("model", ModelConfig), ("data", DataConfig), ("backend", BackendConfig),
                        ("cluster", ClusterConfig), ("policy", PolicyConfig),
                        ("collect", CollectConfig), ("ingest", IngestConfig),
                        ("prepare", PrepareConfig),
                        ("cpt", CptConfig), ("sft", SftConfig), ("rl", RlConfig),
                        ("eval", EvalConfig)]:
        cs.store(group=group, name=f"{group}_schema", node=_open_dicts(OmegaConf.structured(node)))


register_resolvers()
