"""Registered experiments: the research outline's questions as specs over the recipe's stages."""
from .registry import (EXPERIMENTS, SCALES, Experiment, ExperimentConfig, ExperimentListConfig,
                       Variant, get_experiment, list_experiments, recipe_for, run_experiment)

__all__ = ["EXPERIMENTS", "SCALES", "Experiment", "ExperimentConfig", "ExperimentListConfig",
           "Variant", "get_experiment", "list_experiments", "recipe_for", "run_experiment"]
