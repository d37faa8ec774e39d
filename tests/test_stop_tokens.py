"""End-of-turn tokens: the local backend stops on the generation config's ids as well as the
tokenizer's eos, and the decoder reward model closes responses with the chat template's
end-of-turn token rather than assuming it is eos."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import build_tiny_policy, build_tiny_tokenizer
from rewardprompt.backends import SamplingConfig

PROMPTS = [[{"role": "user", "content": "How do I bake bread?"}],
           [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 3}]]


def build_chain_policy(out: Path, extra_stop: str = "<|endoftext|>") -> tuple[Path, list[int]]:
    """A tiny Llama whose greedy reply is always " bread fox" and then ``extra_stop``, which
    its generation config lists as an end-of-turn id beside the tokenizer's eos (<|im_end|>).

    Attention and MLP outputs are zeroed, so the last hidden state is the normed embedding of the
    current token; one-hot embeddings and an untied head then make token k predict token k+1
    of the chain '\\n' -> ' bread' -> ' fox' -> stop."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(out)
    chain = [tok.convert_tokens_to_ids(t) for t in ("Ċ", "Ġbread", "Ġfox", extra_stop)]
    torch.manual_seed(0)
    hidden = 32
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.lm_head.weight
        head.zero_()
        for k, (src, dst) in enumerate(zip(chain, chain[1:])):
            emb[src] = 0.0
            emb[src, k] = 1.0
            head[dst] = 0.0
            head[dst, k] = 1.0
    model.generation_config.eos_token_id = [tok.eos_token_id, chain[-1]]
    model.save_pretrained(out)
    return out, chain


def test_stop_token_ids_merge_the_generation_config_and_the_tokenizer():
    from rewardprompt.backends.local import stop_token_ids

    tok = SimpleNamespace(eos_token_id=2)
    cases = [([7, 2, 7], [7, 2]), (5, [5, 2]), (None, [2]), (torch.tensor([9, 2]), [9, 2])]
    for ids, want in cases:
        model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=ids))
        assert stop_token_ids(model, tok) == want
    assert stop_token_ids(SimpleNamespace(), tok) == [2]  # no generation config at all
    assert stop_token_ids(SimpleNamespace(), SimpleNamespace(eos_token_id=None)) == []


def test_local_backend_stops_on_the_generation_configs_end_of_turn(tmp_path):
    from transformers import AutoTokenizer

    from rewardprompt.backends.local import LocalBackend

    path, chain = build_chain_policy(tmp_path / "policy")
    tok = AutoTokenizer.from_pretrained(path)
    stop = chain[-1]
    assert stop != tok.eos_token_id
    backend = LocalBackend(str(path))
    assert set(backend.eos_ids) == {tok.eos_token_id, stop}
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.0, batch_size=2)
    for c in backend.generate(PROMPTS, cfg):  # one left-padded batch of two lengths
        assert c.finished is True
        assert c.n_tokens == 2  # " bread fox": the stop token itself is not counted
        assert c.text == tok.decode(chain[1:3]).strip() == "bread fox"

    # Stopping on the tokenizer's eos alone runs past the model's end of turn to the limit.
    backend.eos_ids = [tok.eos_token_id]
    for c in backend.generate(PROMPTS, cfg):
        assert c.finished is False and c.n_tokens == cfg.max_new_tokens


# ---------------------------------------------------------------- the decoder reward model

@pytest.fixture(scope="module")
def eos_not_eot(tmp_path_factory) -> str:
    """The tiny policy with eos "<|endoftext|>" while its template closes turns with
    "<|im_end|>" (which the tokenizer also pads with)."""
    from transformers import AutoTokenizer

    out = build_tiny_policy(tmp_path_factory.mktemp("eos_not_eot"))
    tok = AutoTokenizer.from_pretrained(out)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(out)
    return str(out)


def test_end_of_turn_token_comes_from_the_chat_template(eos_not_eot):
    from transformers import AutoTokenizer

    from rewardprompt.rewards.decoder import end_of_turn_token

    tok = AutoTokenizer.from_pretrained(eos_not_eot)
    assert tok.eos_token == "<|endoftext|>"
    assert end_of_turn_token(tok) == "<|im_end|>"
    tok.chat_template = None  # a base model: eos closes the reply
    assert end_of_turn_token(tok) == "<|endoftext|>"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # nothing after
    assert end_of_turn_token(tok) == "<|endoftext|>"
    tok.chat_template = "{{ raise_exception('no') }}"
    assert end_of_turn_token(tok) == "<|endoftext|>"


def test_decoder_closes_responses_with_the_end_of_turn_token(eos_not_eot, tmp_path):
    from rewardprompt.rewards.decoder import DecoderRewardModel

    m = DecoderRewardModel.from_base(eos_not_eot, max_length=24, seed=0).eval()
    tok = m.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert m.eot_id == im_end != tok.eos_token_id
    # Padding with the end-of-turn token would move the sequence-classification read.
    assert tok.pad_token_id not in (im_end, tok.eos_token_id)
    prompts = ["How do I bake bread?", PROMPTS[1]]
    responses = ["Mix flour, water, yeast and salt.", "Sure! " * 20]  # the second is cut
    for p, r in zip(prompts, responses):
        ids = m.encode(p, r)
        assert len(ids) <= 24 and ids[-1] == im_end and tok.eos_token_id not in ids
    batch = m.tokenize(prompts, responses)
    last = batch["attention_mask"].sum(1) - 1
    assert batch["input_ids"][torch.arange(2), last].tolist() == [im_end, im_end]
    # The sequence-classification forward (what TRL trains) reads where embed reads.
    with torch.no_grad():
        ours = m(batch)
        hf = m.model(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    np.testing.assert_allclose(hf.numpy(), ours.numpy(), rtol=1e-5, atol=1e-6)

    d = m.save_weights(tmp_path / "rm")
    opts = json.loads((d / "rm_config.json").read_text())
    assert opts["eot_token"] == "<|im_end|>"
    again = DecoderRewardModel.load_weights(d)
    assert again.eot_id == im_end
    assert again.encode(prompts[0], responses[0]) == m.encode(prompts[0], responses[0])
    # A folder saved before the option was recorded still loads, closing responses with eos
    # as it was fitted.
    del opts["eot_token"]
    (d / "rm_config.json").write_text(json.dumps(opts))
    old = DecoderRewardModel.load_weights(d)
    assert old.eot_id == old.tokenizer.eos_token_id
    assert old.encode(prompts[0], responses[0])[-1] == old.tokenizer.eos_token_id
