"""Beyond one process: the training stages run unchanged under a multi-process launch (2 CPU
processes, gloo) and train what one process trains with the same effective batch; the shipped
accelerate configs are valid."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from rewardprompt.runs import write_jsonl

WORKER = Path(__file__).with_name("distributed_worker.py")


def _tiny_encoder_without_dropout(out: Path) -> Path:
    """A 1-layer BERT with the shipped tokenizer and no dropout: with dropout the two launches
    would draw different masks, and only that would tell them apart."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rewardprompt.rewards.model import default_encoder_path

    AutoTokenizer.from_pretrained(default_encoder_path()).save_pretrained(out)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_policy) -> Path:
    work = tmp_path_factory.mktemp("launch")
    _tiny_encoder_without_dropout(work / "encoder")
    os.symlink(tiny_policy, work / "policy")
    # 9 pairs in batches of 4: the last batch of 1 leaves one of two processes without a pair.
    write_jsonl(work / "pairs.jsonl", [
        {"id": f"p{i}", "prompt": [{"role": "user", "content": f"tell me about thing {i}"}],
         "chosen": f"thing {i} is great and useful", "rejected": f"thing {i} is awful"}
        for i in range(9)])
    write_jsonl(work / "labels.jsonl", [
        {"prompt": [{"role": "user", "content": f"How do I bake bread? ({i})"}],
         "response": r, "rewards": {"helpful": round(0.2 * i, 2)}}
        for i, r in enumerate(["Mix flour, water, yeast and salt, then bake it.",
                               "I'm sorry, I can't help with that request.",
                               "Sure! Here is a list: first, second, third.",
                               "The quick brown fox jumps over the lazy dog."])])
    return work


def _run(args: list[str], work: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=work)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def test_two_processes_train_what_one_trains(workdir):
    # One process: 4 pairs and 4 examples per step. Two: rm train splits its 4 pairs itself, SFT
    # (examples per process, as Trainer counts) gets 2 per process.
    _run([sys.executable, str(WORKER), str(workdir), "single", "4", "4"], workdir)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER),
          str(workdir), "dual", "4", "2"], workdir)
    one, two = (json.loads((workdir / f"{t}.json").read_text()) for t in ("single", "dual"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    # one process took every pair of each step; each of two took half (the last step's single
    # pair on rank 0, a weightless stand-in on rank 1)
    seen = lambda t, r: json.loads((workdir / f"{t}-rank{r}.json").read_text())  # noqa: E731
    single, dual = seen("single", 0), [seen("dual", r) for r in (0, 1)]
    assert sorted(single["rm"]) == [1, 4, 4]
    assert dual[0]["rm"] == dual[1]["rm"] == [(n + 1) // 2 for n in single["rm"]]
    # SFT: Trainer saw both processes, each took 2 of the 4 examples of every step
    assert single["sft"] == {"processes": 1, "examples": [4, 4]}
    assert dual[0]["sft"] == dual[1]["sft"] == {"processes": 2, "examples": [2, 2]}
    # Raw rewards up to a constant: Bradley-Terry sees only differences, so the head's bias has
    # a zero gradient, whose rounding noise Adam turns into steps of either sign (in one process
    # as in two); it cancels in every comparison and in the normaliser.
    centred = lambda x: [v - sum(x) / len(x) for v in x]  # noqa: E731
    assert centred(two["rm_raw"]) == pytest.approx(centred(one["rm_raw"]), abs=1e-4)
    assert two["rm_train_accuracy"] == one["rm_train_accuracy"]
    assert two["sft_steps"] == one["sft_steps"] == 2
    assert two["sft_loss"] == pytest.approx(one["sft_loss"], rel=1e-4)
    # the merged policies hold the same weights
    from safetensors.torch import load_file

    a = load_file(workdir / "sft-single" / "final" / "model.safetensors")
    b = load_file(workdir / "sft-dual" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-4, k
    # only the main process wrote: one final folder, no leftovers
    assert not list((workdir / "sft-dual").glob("final.*"))


@pytest.mark.parametrize("name", ["multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = resources.files("rewardprompt") / "configs" / "accelerate" / f"{name}.yaml"
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 2 and cfg.compute_environment.value == "LOCAL_MACHINE"


def test_rm_train_refuses_a_sharded_launch(monkeypatch, tmp_path):
    from rewardprompt.rewards.train import RMTrainConfig, check_launch

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP shards the model"):
        check_launch(RMTrainConfig(data="x"))
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="batch_size=7 pairs per step cannot be split"):
        check_launch(RMTrainConfig(data="x", freeze_encoder=False, batch_size=7))


def test_encoder_loop_after_a_bf16_trainer_in_the_same_process(tiny_policy, tiny_encoder, tmp_path):
    """A recipe trains a decoder RM or a policy through transformers' Trainer (bf16 where the
    hardware has it) and an encoder RM through its own Accelerator in one process: the second
    must not trip over the first's accelerate state."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from rewardprompt.rewards.train import RMTrainConfig, train_reward_model

    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, bf16=True, max_steps=1,
                             report_to="none", save_strategy="no", disable_tqdm=True)
    Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_policy), args=args,
            train_dataset=[{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 2).train()
    write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": i, "prompt": [{"role": "user", "content": f"question {i}"}],
         "chosen": "a good answer", "rejected": "bad"} for i in range(8)])
    out = train_reward_model(RMTrainConfig(data=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "rm"),
                                           base_model=str(tiny_encoder), freeze_encoder=False,
                                           batch_size=4, test_fraction=0.0, max_length=32))
    assert out["n_train"] == 8 and (tmp_path / "rm" / "rm_config.json").is_file()
