"""SFT's faster paths learn what the plain ones learn: the completion-only LM head gives the loss
and gradients of the model's own forward, padding-free batches the loss of padded ones, and the
final model gathered from a sharded save equals the one merged in memory."""
from __future__ import annotations

import pytest
import torch

from rewardprompt.policy.sft import (SFTConfig, final_model, padding_free_default, sft_collator,
                                     sft_examples, sft_model, sft_trainer)
from rewardprompt.template import RewardTemplate

ROWS = [{"prompt": [{"role": "user", "content": f"How do I bake bread? ({i})"}],
         "response": r, "rewards": {"helpful": round(0.2 * i, 2)}}
        for i, r in enumerate(["Mix flour, water, yeast and salt, then bake it.",
                               "I'm sorry, I can't help with that request.",
                               "Sure! Here is a list: first, second, third.",
                               "The quick brown fox jumps over the lazy dog. a a b b word words"])]
TEMPLATE = RewardTemplate(dimensions=("helpful",))


def _cfg(model, **kw) -> SFTConfig:
    return SFTConfig(model=str(model), max_steps=2, batch_size=4, save_steps=100, lr=1e-2,
                     max_prompt_tokens=64, max_completion_tokens=16, seed=0, **kw)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [True, False])
def test_completion_head_gives_the_same_loss_and_gradients(tiny_policy, lora):
    cfg = _cfg(tiny_policy, lora=lora)
    tok, examples, new = sft_examples(cfg, ROWS, TEMPLATE)
    batch = sft_collator(tok, padding_free=False)(examples)
    out = {}
    for head in (False, True):
        torch.manual_seed(0)
        model = sft_model(cfg, tok, new, completion_head=head)
        model.train()
        for n_items in (None, torch.tensor(37)):  # Trainer passes the tokens of the whole step
            model.zero_grad()
            kw = {} if n_items is None else {"num_items_in_batch": n_items}
            output = model(**batch, **kw)
            assert (output.logits is None) == head  # the patched forward ran, through PEFT too
            loss = output.loss
            loss.backward()
            out[head, n_items is None] = (loss.item(), _grads(model))
    for plain in (True, False):
        (l0, g0), (l1, g1) = out[False, plain], out[True, plain]
        assert l1 == pytest.approx(l0, rel=1e-6)
        assert g0.keys() == g1.keys() and g0
        for k in g0:
            torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7)


def test_the_head_is_only_used_for_training(tiny_policy):
    cfg = _cfg(tiny_policy, lora=False)
    tok, examples, new = sft_examples(cfg, ROWS, TEMPLATE)
    model = sft_model(cfg, tok, new)
    ids = torch.tensor([examples[0]["input_ids"]])
    assert model(input_ids=ids).logits.shape[-1] == len(tok)  # no labels: the full forward


def test_padding_free_batches_give_the_padded_loss(tiny_policy):
    cfg = _cfg(tiny_policy, lora=False)
    tok, examples, new = sft_examples(cfg, ROWS, TEMPLATE)
    model = sft_model(cfg, tok, new).eval()
    padded = sft_collator(tok, padding_free=False)(examples)
    flat = sft_collator(tok, padding_free=True)(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert int(flat["input_ids"].numel()) == int(padded["attention_mask"].sum())
    with torch.no_grad():
        assert model(**flat).loss.item() == pytest.approx(model(**padded).loss.item(), rel=1e-5)


def test_padding_free_only_with_varlen_attention(tiny_policy):
    cfg = _cfg(tiny_policy)
    tok, _, new = sft_examples(cfg, ROWS, TEMPLATE)
    model = sft_model(cfg, tok, new)
    assert padding_free_default(model) is False  # sdpa / eager on this CPU
    model.config._attn_implementation = "flash_attention_2"
    assert padding_free_default(model) is True


def test_final_model_from_a_sharded_save_equals_the_merged_one(tiny_policy, tmp_path):
    cfg = _cfg(tiny_policy, lora=True)
    tok, examples, new = sft_examples(cfg, ROWS, TEMPLATE)
    torch.manual_seed(0)
    trainer = sft_trainer(cfg, sft_model(cfg, tok, new), tok, examples, tmp_path / "out",
                          bf16=False, save_strategy="no", disable_tqdm=True)
    trainer.train()
    gathered = final_model(trainer, cfg, tok, new, tmp_path / "staging", sharded=True)
    merged = final_model(trainer, cfg, tok, new, tmp_path / "unused", sharded=False)
    assert not (tmp_path / "staging").exists()  # the gathered copy is removed once loaded
    a, b = gathered.state_dict(), merged.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # the merged model is plain again: its forward gives logits
    assert "forward" not in vars(merged)


def test_prompt_loss_weight_weights_each_prompt_token(tiny_policy):
    """prompt_loss_weight w: the loss is sum(w_t * CE_t) / sum(w_t) over every token after the
    first (w for a prompt token, 1 for a reply token), from padded and padding-free batches."""
    import torch.nn.functional as F

    w = 0.1
    cfg = _cfg(tiny_policy, lora=False, prompt_loss_weight=w)
    tok, examples, new = sft_examples(cfg, ROWS, TEMPLATE)
    plain_cfg = _cfg(tiny_policy, lora=False)
    _, plain, _ = sft_examples(plain_cfg, ROWS, TEMPLATE)
    for e, p in zip(examples, plain):
        n_prompt = sum(1 for v in p["labels"] if v == -100)
        assert e["input_ids"] == p["input_ids"] and e["labels"] == e["input_ids"]
        assert e["loss_weights"] == [w] * n_prompt + [1.0] * (len(e["input_ids"]) - n_prompt)
    torch.manual_seed(0)
    model = sft_model(cfg, tok, new).eval()
    num, den = 0.0, 0.0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].float()  # no labels: the full forward
            ce = F.cross_entropy(logits, ids[0, 1:], reduction="none")
            weights = torch.tensor(e["loss_weights"][1:])
            num, den = num + float((ce * weights).sum()), den + float(weights.sum())
        for padding_free in (False, True):
            batch = sft_collator(tok, padding_free=padding_free)(examples)
            assert batch["loss_weights"].shape == batch["labels"].shape
            assert model(**batch).loss.item() == pytest.approx(num / den, rel=1e-5)
        # A weight near 0 gives the completion-only loss back.
        tiny = _cfg(tiny_policy, lora=False, prompt_loss_weight=1e-9)
        _, near0, _ = sft_examples(tiny, ROWS, TEMPLATE)
        completion_only = model(**sft_collator(tok, padding_free=False)(plain)).loss.item()
        assert model(**sft_collator(tok, padding_free=False)(near0)).loss.item() == \
            pytest.approx(completion_only, rel=1e-4)
