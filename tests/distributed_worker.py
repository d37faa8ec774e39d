"""Run by tests/test_accelerate.py, once plainly and once under torchrun with 2 CPU processes
(gloo): the encoder reward model's own loop and SFT on tiny models, as the stages run them.

    python distributed_worker.py WORKDIR TAG RM_BATCH SFT_BATCH

``rm train``'s batch_size is the pairs per optimiser step (split over the processes), SFT's the
examples per process and step, so the caller passes SFT_BATCH halved for 2 processes.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    from rewardprompt.policy.sft import SFTConfig, run_sft
    from rewardprompt.rewards.model import BaseRewardModel
    from rewardprompt.rewards.train import RMTrainConfig, train_reward_model
    from rewardprompt.runs import read_jsonl

    from rewardprompt.rewards import train

    work, tag, rm_batch, sft_batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rank = int(os.environ.get("RANK", "0"))
    # The pairs this process's loss was taken on, per step: shows the batches were split.
    sizes: list[int] = []
    for name in ("_bt_loss", "_bt_loss_share"):
        def counted(r_chosen, *args, _fn=getattr(train, name)):
            sizes.append(len(r_chosen))
            return _fn(r_chosen, *args)
        setattr(train, name, counted)
    # The examples each SFT step of this process received, and the processes its Trainer saw.
    from rewardprompt.policy import sft as sft_module

    seen: dict = {"examples": []}

    def trainer(*args, _fn=sft_module.sft_trainer, **kwargs):
        t = _fn(*args, **kwargs)
        seen["processes"] = t.accelerator.num_processes
        step = t.training_step

        def counted_step(model, inputs, *a, **k):
            seen["examples"].append(int(inputs["input_ids"].shape[0]))
            return step(model, inputs, *a, **k)
        t.training_step = counted_step
        return t
    sft_module.sft_trainer = trainer
    rm = train_reward_model(RMTrainConfig(
        data=str(work / "pairs.jsonl"), out=str(work / f"rm-{tag}"), base_model=str(work / "encoder"),
        freeze_encoder=False, epochs=1, batch_size=rm_batch, lr=1e-3, head_lr=1e-2, max_length=48,
        test_fraction=0.0, seed=0))
    sft = run_sft(SFTConfig(
        data=str(work / "labels.jsonl"), out=str(work / f"sft-{tag}"), model=str(work / "policy"),
        max_steps=2, batch_size=sft_batch, save_steps=100, lr=1e-2, max_prompt_tokens=64,
        max_completion_tokens=16, seed=0))
    (work / f"{tag}-rank{rank}.json").write_text(json.dumps({"rm": sizes, "sft": seen}))
    if rank == 0:
        pairs = read_jsonl(work / "pairs.jsonl")
        model = BaseRewardModel.load(work / f"rm-{tag}")
        raw = model.score_raw([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
        (work / f"{tag}.json").write_text(json.dumps({
            "world_size": int(os.environ.get("WORLD_SIZE", "1")), "rm_raw": raw.tolist(),
            "rm_train_accuracy": rm["train_accuracy"], "sft_loss": sft["train_loss"],
            "sft_steps": sft["steps"]}))


if __name__ == "__main__":
    main()
