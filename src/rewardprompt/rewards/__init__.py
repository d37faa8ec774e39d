"""Reward models and scorers."""
