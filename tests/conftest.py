"""Shared fixtures: tiny random models built from a config (never the real 135M model)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Reward models use bf16 autocast on CPUs with native bf16: pin every test (and the CLI runs they
# start as subprocesses) to fp32, so that tolerances do not depend on the CPU. The bf16 path has
# its own test, which sets the variable back to "1".
os.environ["REWARDPROMPT_CPU_BF16"] = "0"
# No test reads from or writes to the user's stage cache (the CLI runs they start inherit this);
# the stage-cache tests point it at a temporary folder of their own.
os.environ["REWARDPROMPT_CACHE"] = "off"

# SmolLM2's ChatML template (default system turn included), so tiny models see the real layout.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt, then bake it.",
    "I'm sorry, I can't help with that request. Is there something else I can do?",
    "Helpful reward: 0.42 Harmless reward: 0.75 <REWARD> <SOS> >= <= 0 1 2 3 4 5 6 7 8 9 .",
    "The quick brown fox jumps over the lazy dog. a a a a b b b word words",
    "Sure! Here is a list: first, second, third. What else would you like to know?",
]


def build_tiny_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                  "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", bos_token="<|im_start|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_tiny_policy(out: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> Path:
    return build_tiny_policy(tmp_path_factory.mktemp("tiny_policy"))


def build_tiny_encoder(out: Path, seed: int = 0) -> Path:
    """A 1-layer BERT with the shipped MiniLM tokenizer (tokenizer files only, tiny weights)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rewardprompt.rewards.model import default_encoder_path

    tok = AutoTokenizer.from_pretrained(default_encoder_path())
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=512)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))
