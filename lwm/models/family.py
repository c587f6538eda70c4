"""What a model family provides: the hooks the generic HF, Megatron, conversion and layout code
call instead of branching on model.arch. Hooks import torch, transformers and Megatron inside
their bodies, so the registry loads with the config (lwm.parallel_config) at start-up."""

from __future__ import annotations

import importlib
from types import ModuleType


class ModelFamily:
    """One architecture (`model.arch`). A family subclasses this and fills in every hook
    (check_parallel may stay empty: the generic checks cover a plain MoE transformer)."""

    arch: str = ""                      # the model.arch value that selects it
    hf_model_types: tuple[str, ...] = ()  # HF config.model_type values whose checkpoints it reads
    layout_class: str = ""              # the layout class in the family's adapter module

    def hf_config(self, mcfg, common: dict):
        """(HF config, model class) from `common`: our model fields under the HF names every
        family shares (lwm.models.hf.build_config)."""
        raise NotImplementedError

    def megatron_config(self, mcfg) -> dict:
        """The TransformerConfig keywords of the architecture (activation, norms, biases,
        router scoring, attention variant); sizes, parallelism and dtype are generic."""
        raise NotImplementedError

    def layer_spec(self, tc, mcfg, use_te: bool):
        """Megatron's layer (or block) spec for GPTModel: Transformer Engine layers or
        torch-only ones."""
        raise NotImplementedError

    def adapter(self) -> ModuleType:
        """The HF <-> Megatron state-dict adapter, the family folder's `adapter` module: hf_view,
        ends_to_megatron, ends_to_hf, layer_to_megatron and layer_to_hf (lwm.models.convert
        drives it) and the layout class named by `layout_class`."""
        return importlib.import_module(f"lwm.models.{self.arch}.adapter")

    def layout(self, mcfg):
        """The adapter's layout (sizes it needs) from our model config."""
        return getattr(self.adapter(), self.layout_class).from_model_config(mcfg)

    def layout_from_hf(self, hf_config):
        """The adapter's layout from an HF config."""
        return getattr(self.adapter(), self.layout_class).from_hf_config(hf_config)

    def check_parallel(self, mcfg, m, errors: list[str]) -> None:
        """Append what the family needs of the Megatron layout `m` (backend.megatron) beyond
        the generic checks of lwm.parallel_config.parallel_plan."""


def must_divide(errors: list[str], a: int, a_name: str, b: int, b_name: str) -> None:
    if b <= 0:
        errors.append(f"{b_name} = {b} must be >= 1")
    elif a % b:
        errors.append(f"{a_name} = {a} is not divisible by {b_name} = {b}")
