"""Model surgery for training: what trains of a reward model (``finetune``: full, the vision
tower frozen, or LoRA adapters on the language model), how (gradient checkpointing,
``torch_compile``) and, for saving, the adapters merged back so that the saved backbone is a
plain Hugging Face model.
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
        enable_checkpointing(model.backbone)
    if config.torch_compile:
        compile_backbone(model)
    return model


def enable_checkpointing(backbone) -> None:
    """Non-reentrant activation (gradient) checkpointing, by the name the installed
    transformers has: ``activation_checkpointing_enable`` from 5.x on, where
    ``gradient_checkpointing_enable`` is a deprecated alias to be removed in v6; the old name
    before (4.57, the oldest version the project supports)."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def compile_backbone(model: RewardModel) -> RewardModel:
    """Compile the language model and the vision tower in place (``nn.Module.compile``).

    In place, so that parameter names, saving and the optimizer see the modules unchanged;
    with dynamic shapes, so that batches of other lengths reuse the graphs instead of
    compiling again. The first forward and backward compile (and the first under
    ``no_grad``, for the tests); a later model of the same architecture in the same process
    reuses the compiled code. Parts the compiler cannot trace (the projector's placement of
    image features, the key/value cache) stay eager.
    """
    model.vision_tower().compile(dynamic=True)
    getattr(model.backbone.model, model.language_model_name()).compile(dynamic=True)
    return model


def merge_adapters(model: RewardModel) -> RewardModel:
    """Merge LoRA adapters into the language model's weights (a no-op without adapters)."""
    name = model.language_model_name()
    language_model = getattr(model.backbone.model, name)
    if hasattr(language_model, "merge_and_unload"):
        setattr(model.backbone.model, name, language_model.merge_and_unload())
    return model
