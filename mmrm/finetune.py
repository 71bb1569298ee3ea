"""Model surgery for training: what trains of a reward model (``finetune``: full, the vision
tower frozen, or LoRA adapters on the language model) and, for saving, the adapters merged
back so that the saved backbone is a plain Hugging Face model.
"""

from __future__ import annotations

from mmrm.config import Finetune, TrainConfig
from mmrm.model import RewardModel


def apply_finetune(model: RewardModel, config: TrainConfig) -> RewardModel:
    """Freeze the vision tower, or wrap the language model in LoRA adapters, as configured.

    LoRA freezes the vision tower too (as LLaMA-Factory does by default): a LoRA run is one
    that keeps the backbone's weights, and a full vision tower in training would hold most of
    the optimizer state LoRA is chosen to save. The projector and value head train fully.
    """
    if config.finetune in (Finetune.FREEZE_VISION, Finetune.LORA):
        for p in model.vision_parameters():
            p.requires_grad_(False)
    if config.finetune is Finetune.LORA:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                          lora_dropout=config.lora.dropout,
                          target_modules=config.lora.target_modules)
        name = model.language_model_name()
        setattr(model.backbone.model, name, get_peft_model(getattr(model.backbone.model, name),
                                                           lora))
    if config.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def merge_adapters(model: RewardModel) -> RewardModel:
    """Merge LoRA adapters into the language model's weights (a no-op without adapters)."""
    name = model.language_model_name()
    language_model = getattr(model.backbone.model, name)
    if hasattr(language_model, "merge_and_unload"):
        setattr(model.backbone.model, name, language_model.merge_and_unload())
    return model
