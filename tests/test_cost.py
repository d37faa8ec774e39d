"""The price table and what a stage's tokens cost."""
from __future__ import annotations

import pytest

from rewardprompt.cost import Usage, cost_table, price, read_prices

TABLE = {"acme": {"read": "2026-12-02", "verified": False, "source": "a page",
                  "models": {"m1": {"train": 2.0, "train_dpo": 5.0, "input": 1.0, "output": 4.0}},
                  "default": {"train": 10.0, "input": 0.0, "output": 0.0}}}


def test_price_by_model_default_and_unknown():
    u = Usage("acme", "m1", trained_tokens=1_000_000, prompt_tokens=500_000,
              completion_tokens=250_000)
    p = price(u, TABLE)
    assert p["usd"] == pytest.approx(2.0 + 0.5 + 1.0) and p["priced_as"] == "m1"
    assert p["prices_read"] == "2026-12-02" and p["prices_verified"] is False
    assert price(Usage("acme", "m1", trained_tokens=10**6, method="dpo"), TABLE)["usd"] == 5.0
    other = price(Usage("acme", "m2", trained_tokens=10**6), TABLE)
    assert other["usd"] == 10.0 and other["priced_as"] == "default"
    assert price(Usage("nobody", "m1", trained_tokens=1), TABLE)["usd"] is None
    # OpenAI's fine-tuned model ids are priced as their base model.
    assert price(Usage("acme", "ft:m1:org::abc", prompt_tokens=10**6), TABLE)["priced_as"] == "m1"


def test_cost_table_rows_per_stage():
    stages = {"sft": {"cost": Usage("acme", "m1", trained_tokens=10**6).to_dict()},
              "generate": {"cost": [Usage("acme", "m1", completion_tokens=10**6).to_dict()]},
              "label": {"n": 3}}
    rows = cost_table(stages, TABLE)
    assert [(r["stage"], r["usd"]) for r in rows] == [("sft", 2.0), ("generate", 4.0)]


def test_shipped_table_parses_and_own_table_from_the_environment(tmp_path, monkeypatch):
    shipped = read_prices()
    assert {"openai", "together", "openai-chat", "local"} <= set(shipped)
    own = tmp_path / "prices.yaml"
    own.write_text("acme:\n  read: '2026-01-01'\n  default: {train: 1.0}\n")
    monkeypatch.setenv("REWARDPROMPT_PRICES", str(own))
    assert set(read_prices()) == {"acme"}
    own.write_text("acme:\n  default: {train: 1.0}\n")
    with pytest.raises(ValueError, match="prices.yaml: provider 'acme' needs .*'read'"):
        read_prices()
    own.write_text("acme:\n  read: x\n  models: {m: {train: -1}}\n")
    with pytest.raises(ValueError, match=r"acme\.m: prices \['train'\]"):
        read_prices()
