"""The file a fine-tuned policy folder carries beside its weights: what it was trained to read.

SFT writes it; sampling reads it, so that a policy is shown the reward block it learned (the
template, whether it is conditioned at all, its prompt budget). It lives apart from both so
that sampling does not depend on training for a file format.
"""
from __future__ import annotations

from pathlib import Path

from ..runs import atomic_write_json, read_json

POLICY_META = "rewardprompt.json"


def read_policy_meta(model: str | Path) -> dict:
    """The metadata of a policy folder ({} for a model this package did not fine-tune)."""
    path = Path(model) / POLICY_META
    return read_json(path) if path.exists() else {}


def write_policy_meta(folder: str | Path, meta: dict) -> Path:
    return atomic_write_json(Path(folder) / POLICY_META, meta)
