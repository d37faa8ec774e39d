"""The public Python API runs the tiny pipeline: the names the README shows, nothing else."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_import_is_cheap_and_names_resolve():
    code = ("import sys, rewardprompt\n"
            "assert not any(m in sys.modules for m in ('torch', 'transformers')), 'heavy import'\n"
            "missing = [n for n in rewardprompt.__all__ if getattr(rewardprompt, n, None) is None]\n"
            "print('MISSING', missing)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "MISSING []" in res.stdout, res.stdout + res.stderr[-2000:]


def test_tiny_pipeline_through_the_api(tmp_path, tiny_policy):
    from rewardprompt import (EvaluateConfig, GenerateConfig, LabelConfig, RewardTemplate,
                              RMTrainConfig, SamplingConfig, SFTConfig, build_report, evaluate,
                              generate, label, sft, train_reward_model)

    run = tmp_path / "run"
    rows = [{"prompt": f"Tell me about tea number {i}.",
             "chosen": f"Sure! Here's a fact about tea {i}.", "rejected": "No."} for i in range(40)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": [{"role": "user", "content": r["prompt"]}]})
                               + "\n" for i, r in enumerate(rows[:6])))

    rm = train_reward_model(RMTrainConfig(data=str(pairs), out=str(run / "rm" / "quality"),
                                          run=str(run), family="decoder",
                                          base_model=str(tiny_policy), layers=1, pooling="mean",
                                          max_length=48))
    assert 0.0 <= rm["accuracy"] <= 1.0
    sampling = SamplingConfig(max_new_tokens=8, batch_size=8)
    generate(GenerateConfig(prompts=str(prompts), model=str(tiny_policy), run=str(run),
                            label="steered", conditioned=False, samples_per_prompt=2,
                            prefills=["Sure! Here's", "No."], sampling=sampling))
    label(LabelConfig(samples=[str(run / "generate" / "steered.jsonl")], run=str(run),
                      scorers={"quality": str(run / "rm" / "quality")}, policy=str(tiny_policy),
                      max_completion_tokens=16))
    template = RewardTemplate(dimensions=("quality",), position="reply", close_tag="", decimals=1)
    for conditioned, name in ((True, "conditioned"), (False, "uncond_sft")):
        sft(SFTConfig(run=str(run), model=str(tiny_policy), conditioned=conditioned,
                      template={"position": "reply", "close_tag": "", "decimals": 1},
                      max_steps=2, batch_size=4, save_steps=1, max_prompt_tokens=96))
        generate(GenerateConfig(prompts=str(prompts), model=str(run / "sft" / name / "final"),
                                run=str(run), label=name, sampling=sampling))
    meta = json.loads((run / "sft/conditioned/final/rewardprompt.json").read_text())
    assert meta["template"] == template.to_dict()
    result = evaluate(EvaluateConfig(run=str(run), scorers={"quality": str(run / "rm" / "quality")},
                                     n_boot=20))
    assert set(result) == {"quality"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["baselines"]) == {"uncond_sft"} and "goal" in metrics
    assert build_report(run).is_file()
    # called from Python with run set, each stage recorded itself in the run's manifest
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"rm_train_quality", "generate_steered", "label", "sft_conditioned", "sft_uncond_sft",
            "generate_conditioned", "evaluate"} <= set(manifest["stages"])
