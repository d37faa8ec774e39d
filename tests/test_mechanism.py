"""The conditioning mechanism, apart from reward-model quality.

A tiny policy is trained through the real stages (label -> sft -> generate -> evaluate) on a
synthetic reward that is a plain function of the text (its length). If the template, the mask or
the labels were broken, the number in the prompt could not steer the length and r would collapse;
the unconditioned baseline on the same data shows what no conditioning looks like.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import build_tiny_policy
from rewardprompt.backends import SamplingConfig
from rewardprompt.evaluation.controllability import EvaluateConfig, run_evaluate
from rewardprompt.sampling import GenerateConfig, run_generate
from rewardprompt.labelling import LabelConfig, run_label
from rewardprompt.policy.sft import SFTConfig, run_sft
from rewardprompt.runs import read_json, write_jsonl

pytestmark = pytest.mark.slow
TOPICS = ["bread", "fox", "dog", "list", "help"]
SCORER = "synthetic:length:20"
TEMPLATE = {"dimensions": ["length"], "decimals": 1}


def test_synthetic_length_reward_is_learned(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    policy = build_tiny_policy(tmp_path / "policy")
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(100):
        a, b = rng.choice(np.arange(1, 6), 2, replace=False)  # 4..20 words: rewards 0.2..1.0
        prompt = [{"role": "user", "content": f"Tell me about the {TOPICS[i % 5]} {i}"}]
        pairs.append({"id": f"p{i}", "prompt": prompt,
                      "chosen": " ".join(["a"] * (4 * a)), "rejected": " ".join(["a"] * (4 * b))})
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "eval.jsonl", [
        {"id": f"e{i}",
         "prompt": [{"role": "user", "content": f"Tell me about the {TOPICS[i % 5]} {1000 + i}"}]}
        for i in range(20)])
    run_label(LabelConfig(pairs=[str(tmp_path / "pairs.jsonl")], scorers={"length": SCORER},
                          out=str(tmp_path / "train.jsonl"), policy=str(policy),
                          max_completion_tokens=64))
    gens = []
    for name, conditioned in (("conditioned", True), ("uncond_sft", False)):
        run_sft(SFTConfig(data=str(tmp_path / "train.jsonl"), out=str(tmp_path / name),
                          model=str(policy), conditioned=conditioned, template=TEMPLATE,
                          # the step count that learns the length with today's packages
                          # (docs/results.md has what fewer steps reached)
                          lora=False, lr=3e-3, max_steps=1600, batch_size=16,
                          max_prompt_tokens=128, max_completion_tokens=64, save_steps=10_000))
        gens.append(str(tmp_path / f"{name}.jsonl"))
        run_generate(GenerateConfig(prompts=str(tmp_path / "eval.jsonl"),
                                    model=str(tmp_path / name / "final"), out=gens[-1], label=name,
                                    conditioned=conditioned, template=TEMPLATE,
                                    targets=["0.2", "0.4", "0.6", "0.8", "1.0"],
                                    max_prompt_tokens=128,
                                    sampling=SamplingConfig(max_new_tokens=64, temperature=0.0)))
    run_evaluate(EvaluateConfig(generations=gens, scorers={"length": SCORER}, out=str(tmp_path),
                                n_boot=200))
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["length"]["pearson_r"] >= 0.9, metrics["length"]
    # Same data and steps without the block: the length the baseline writes cannot follow the
    # target (its mean per target bin is flat), while the conditioned model's rises with it.
    cond = [b["mean_actual"] for b in metrics["length"]["bins"] if b["n"]]
    base = [b["mean_actual"] for b in metrics["baselines"]["uncond_sft"]["length"]["bins"] if b["n"]]
    assert cond[-1] - cond[0] > 0.4 and abs(base[-1] - base[0]) < 0.1, (cond, base)
