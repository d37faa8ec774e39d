"""rewardprompt: align language models by putting the reward in the prompt.

The public API: every stage's config and entry function, the reward block, and the recipe.
Names load on first use, so ``import rewardprompt`` stays cheap (no torch until a stage runs)::

    from rewardprompt import RewardTemplate, train_reward_model, label, sft, generate, evaluate
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> (module, attribute)
_API = {
    "RewardTemplate": ("rewardprompt.template", "RewardTemplate"),
    "Target": ("rewardprompt.template", "Target"),
    "load_preferences": ("rewardprompt.data", "load_preferences"),
    "SplitConfig": ("rewardprompt.data.split", "SplitConfig"),
    "split_data": ("rewardprompt.data.split", "split_data"),
    "RMTrainConfig": ("rewardprompt.rewards.train", "RMTrainConfig"),
    "train_reward_model": ("rewardprompt.rewards.train", "train_reward_model"),
    "RMEvalConfig": ("rewardprompt.rewards.eval", "RMEvalConfig"),
    "evaluate_reward_model": ("rewardprompt.rewards.eval", "evaluate_reward_model"),
    "RMWrapConfig": ("rewardprompt.rewards.hf", "RMWrapConfig"),
    "wrap_reward_model": ("rewardprompt.rewards.hf", "wrap_reward_model"),
    "load_scorer": ("rewardprompt.rewards.scorer", "load_scorer"),
    "LabelConfig": ("rewardprompt.labelling", "LabelConfig"),
    "label": ("rewardprompt.labelling", "run_label"),
    "SFTConfig": ("rewardprompt.policy.sft", "SFTConfig"),
    "sft": ("rewardprompt.policy.sft", "run_sft"),
    "SamplingConfig": ("rewardprompt.backends.base", "SamplingConfig"),
    "GenerateConfig": ("rewardprompt.sampling", "GenerateConfig"),
    "generate": ("rewardprompt.sampling", "run_generate"),
    "EvaluateConfig": ("rewardprompt.evaluation.controllability", "EvaluateConfig"),
    "evaluate": ("rewardprompt.evaluation.controllability", "run_evaluate"),
    "EloConfig": ("rewardprompt.evaluation.elo", "EloConfig"),
    "elo": ("rewardprompt.evaluation.elo", "run_elo"),
    "build_report": ("rewardprompt.report.html", "build_report"),
    "RecipeConfig": ("rewardprompt.recipe", "RecipeConfig"),
    "load_config": ("rewardprompt.config", "load_config"),
    "run_recipe": ("rewardprompt.recipe", "run_recipe"),
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'rewardprompt' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
