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


def test_stage_costs_count_what_making_each_stage_cost(tmp_path):
    """A restored stage counts the compute of the run that made it; a provider's tokens are
    priced from the table; a local stage is priced by the hour, with the tokens it counted."""
    import json

    from rewardprompt.cost import stage_costs

    table = {**TABLE, "local": {"read": "x", "default": {"hour": 3.6}}}
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "sft.json").write_text(json.dumps({"tokens_seen": 1200}))
    (tmp_path / "stages" / "generate.json").write_text(json.dumps({"n": 10, "mean_tokens": 4.5}))
    hosted = {"cost": Usage("acme", "m1", trained_tokens=10**6).to_dict()}
    (tmp_path / "stages" / "hosted.json").write_text(json.dumps(hosted))
    manifest = {"stages": {
        "sft": {"wall_s": 0.0, "result_file": "stages/sft.json",
                "cached_from": {"saved_s": 100.0, "source": "/elsewhere"}},
        "generate": {"wall_s": 20.0, "result_file": "stages/generate.json"},
        "hosted": {"wall_s": 50.0, "result_file": "stages/hosted.json"},
        "label": {"wall_s": 1.0}}}
    rows = {r["stage"]: r for r in stage_costs(manifest, tmp_path, table)}
    assert rows["sft"]["compute_s"] == 100.0 and rows["sft"]["restored"]
    assert rows["sft"]["trained_tokens"] == 1200 and rows["sft"]["usd"] == pytest.approx(0.1)
    assert rows["generate"]["completion_tokens"] == 45 and not rows["generate"]["restored"]
    assert rows["generate"]["usd"] == pytest.approx(0.02)
    assert rows["hosted"]["usd"] == 2.0 and rows["hosted"]["priced_as"] == "acme: m1"
    assert rows["label"]["trained_tokens"] is None and rows["label"]["compute_s"] == 1.0
    # No hourly rate for this machine: its stages are unpriced, not free.
    assert stage_costs(manifest, tmp_path, TABLE)[0]["usd"] is None
