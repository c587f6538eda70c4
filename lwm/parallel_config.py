"""Typed settings of the cluster-scale backends, and the parallel layout they imply.

`backend.deepspeed.*` and `backend.megatron.*` hold each framework's knobs under our names;
lwm/train/engines/ translates them into a DeepSpeed JSON or a Megatron TransformerConfig.
`parallel_plan()` checks every size that has to divide before any process group exists, so
a bad layout fails at start-up with the field names, not with a shape error inside NCCL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lwm.models import family
from lwm.models.family import must_divide

BACKENDS = ("hf", "deepspeed", "megatron")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2                  # 0-3
    offload_optimizer: str = "none"      # none | cpu | nvme
    offload_param: str = "none"          # none | cpu | nvme (ZeRO-3 only)
    nvme_path: str = "/local_nvme"       # folder for offload=nvme
    pin_memory: bool = True              # pinned host memory for offloaded tensors
    overlap_comm: bool = True            # overlap gradient reduction with the backward pass
    contiguous_gradients: bool = True    # gradients copied into one buffer as produced
    reduce_bucket_size: int = 500_000_000  # elements reduced at once
    allgather_bucket_size: int = 500_000_000  # elements all-gathered at once
    stage3_prefetch_bucket_size: int = 50_000_000  # ZeRO-3: parameter elements fetched ahead
    stage3_param_persistence_threshold: int = 100_000  # ZeRO-3: smaller parameters stay whole
    stage3_gather_16bit_weights_on_model_save: bool = True  # ZeRO-3: full weights gathered on export
    activation_checkpointing: bool = False  # recompute activations in backward (less memory)
    wall_clock_breakdown: bool = False   # log DeepSpeed's per-phase timings


@dataclass
class MegatronConfig:
    tensor_parallel: int = 1             # TP: each layer's matrices split over this many GPUs
    pipeline_parallel: int = 1           # PP: the layers split into this many stages
    context_parallel: int = 1            # CP: each sequence split over this many GPUs
    expert_parallel: int = 1             # EP: the experts split over this many GPUs
    expert_tensor_parallel: int = 1      # ETP: each expert's matrices split over this many GPUs
    sequence_parallel: bool = False      # required with TP > 1 and MoE
    token_dispatcher: str = "alltoall"   # alltoall | allgather | flex
    grouped_gemm: bool = True            # TE grouped GEMM experts (GPU); False = one MLP per expert
    router_load_balancing: str = "aux_loss"  # aux_loss | seq_aux_loss | global_aux_loss | sinkhorn | none
    aux_loss_coef: float = -1.0          # < 0: the model's router_aux_loss_coef
    z_loss_coef: float = 0.0             # router z-loss weight; 0 = off
    router_dtype: str = "fp32"           # fp32 | fp64 | "" (the model's dtype)
    capacity_factor: float = 0.0         # 0 = dropless
    permute_fusion: bool = False         # needs TE
    distributed_optimizer: bool = True   # optimizer state sharded over data-parallel ranks
    overlap_grad_reduce: bool = True     # overlap gradient reduction with the backward pass
    overlap_param_gather: bool = True    # overlap parameter gathering with the forward pass
    recompute_granularity: str = ""      # "" | full | selective
    recompute_method: str = "uniform"    # uniform | block (full recompute only)
    recompute_num_layers: int = 1        # layers per recompute chunk
    recompute_modules: list[str] = field(default_factory=lambda: ["core_attn"])  # selective only


@dataclass
class ParallelPlan:
    """The layout of one job: how the world splits. dp is derived, never set by hand."""
    world_size: int
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int = 1
    dp: int = 1
    expert_dp: int = 1
    num_local_experts: int = 0
    layers_per_stage: int = 0

    def describe(self) -> str:
        return (f"world {self.world_size} = TP {self.tp} x PP {self.pp} x CP {self.cp} x DP {self.dp}; "
                f"experts: EP {self.ep} x ETP {self.etp} x expert-DP {self.expert_dp}, "
                f"{self.num_local_experts} experts per rank; {self.layers_per_stage} layers per stage")


def parallel_plan(mcfg, bcfg, world_size: int) -> ParallelPlan:
    """The layout for `world_size` ranks, or a ValueError listing every size that does not divide."""
    errors: list[str] = []
    if bcfg.name not in BACKENDS:
        raise ValueError(f"backend.name = '{bcfg.name}': expected one of {', '.join(BACKENDS)}")
    if bcfg.name != "megatron":
        # hf and deepspeed train the HF MoE blocks: experts are data-parallel (expert parallelism
        # is Megatron's)
        if bcfg.name == "deepspeed" and bcfg.deepspeed.offload_param != "none" and bcfg.deepspeed.zero_stage != 3:
            errors.append("backend.deepspeed.offload_param needs zero_stage = 3")
        if errors:
            raise ValueError("parallel layout: " + "; ".join(errors))
        return ParallelPlan(world_size=world_size, ep=1, dp=world_size, expert_dp=world_size,
                            num_local_experts=mcfg.num_experts, layers_per_stage=mcfg.num_layers)
    m = bcfg.megatron
    tp, pp, cp, ep, etp = (m.tensor_parallel, m.pipeline_parallel, m.context_parallel,
                           m.expert_parallel, m.expert_tensor_parallel)
    must_divide(errors, mcfg.num_heads, "model.num_heads", tp, "backend.megatron.tensor_parallel")
    must_divide(errors, mcfg.num_kv_heads, "model.num_kv_heads", tp, "backend.megatron.tensor_parallel")
    must_divide(errors, mcfg.num_experts, "model.num_experts", ep, "backend.megatron.expert_parallel")
    must_divide(errors, mcfg.moe_intermediate_size, "model.moe_intermediate_size", etp,
                "backend.megatron.expert_tensor_parallel")
    family(mcfg.arch).check_parallel(mcfg, m, errors)
    must_divide(errors, mcfg.num_layers, "model.num_layers", pp, "backend.megatron.pipeline_parallel")
    must_divide(errors, world_size, "world size (cluster.nodes * cluster.gpus_per_node)", tp * pp * cp,
                "tensor_parallel * pipeline_parallel * context_parallel")
    # The expert layers fold the same ranks as ETP x EP x expert-DP x PP (MoE parallel folding).
    must_divide(errors, world_size, "world size (cluster.nodes * cluster.gpus_per_node)", etp * ep * pp,
                "expert_tensor_parallel * expert_parallel * pipeline_parallel")
    if ep == 1 and etp != tp and mcfg.num_experts > 0:
        # megatron-core marks expert weights as dense when EP = 1 and reduces their gradients over
        # the dense data-parallel group: with ETP != TP that group is not the experts' own and the
        # gradients come out partial, silently
        errors.append(f"backend.megatron.expert_tensor_parallel ({etp}) must equal tensor_parallel ({tp}) "
                      "when expert_parallel = 1")
    if tp > 1 and mcfg.num_experts > 0 and not m.sequence_parallel:
        errors.append("backend.megatron.sequence_parallel must be true when tensor_parallel > 1 with MoE")
    if m.token_dispatcher not in ("alltoall", "allgather", "flex"):
        errors.append(f"backend.megatron.token_dispatcher = '{m.token_dispatcher}': alltoall | allgather | flex")
    if m.recompute_granularity not in ("", "full", "selective"):
        errors.append(f"backend.megatron.recompute_granularity = '{m.recompute_granularity}': '' | full | selective")
    if errors:
        raise ValueError("parallel layout: " + "; ".join(errors))
    return ParallelPlan(world_size=world_size, tp=tp, pp=pp, cp=cp, ep=ep, etp=etp,
                        dp=world_size // (tp * pp * cp), expert_dp=world_size // (etp * ep * pp),
                        num_local_experts=mcfg.num_experts // ep,
                        layers_per_stage=mcfg.num_layers // pp)


def world_size_of(ccfg) -> int:
    """Ranks a cluster shape gives: one per GPU, or one per node on CPU (gpus_per_node = 0)."""
    return ccfg.nodes * max(ccfg.gpus_per_node, 1)
