"""``rewardprompt data split``: train / dev / test by the hash of the first user turn."""
from __future__ import annotations

import json
from pathlib import Path

from rewardprompt.cli import main
from rewardprompt.data.preference import load_preferences, split_key, split_pairs


def _write_pairs(path, n_conversations=40, per_conversation=3):
    rows = []
    for c in range(n_conversations):
        first = f"Conversation {c}: how do I look after a plant of kind {c * 7 % 13}?"
        for k in range(per_conversation):
            rows.append({"prompt": [{"role": "user", "content": first},
                                    {"role": "assistant", "content": f"Water it ({k})."},
                                    {"role": "user", "content": f"And follow-up question {k}?"}],
                         "chosen": f"A careful answer {c}-{k}.",
                         "rejected": f"A careless answer {c}-{k}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_data_split_through_the_cli(tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    n = _write_pairs(src)
    out = tmp_path / "split"
    assert main(["data", "split", str(src), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    sides = {s: _read(out / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert all(sides.values()), {s: len(v) for s, v in sides.items()}
    assert sum(len(v) for v in sides.values()) == n
    firsts = {s: {r["prompt"][0]["content"] for r in rows} for s, rows in sides.items()}
    assert not firsts["train"] & firsts["dev"]
    assert not firsts["train"] & firsts["test"]
    assert not firsts["dev"] & firsts["test"]
    ids = [r["id"] for rows in sides.values() for r in rows]
    assert len(set(ids)) == n

    for side, rows in sides.items():
        prompts = _read(out / f"{side}_prompts.jsonl")
        assert prompts == [{"id": r["id"], "prompt": r["prompt"]} for r in rows]
        assert all(len(p["prompt"]) == 3 and p["prompt"][-1]["role"] == "user" for p in prompts)

    summary = json.loads((out / "split.json").read_text())
    assert "first user turn" in summary["rule"] and "sha256" in summary["rule"]
    assert summary["test_fraction"] == 0.2 and summary["dev_fraction"] == 0.1
    assert summary["counts"] == {s: len(v) for s, v in sides.items()}
    assert printed["counts"] == summary["counts"]

    # The test side is exactly what split_pairs (and so rm train's held-out part) calls test;
    # the dev side is carved from the training side only.
    pairs = load_preferences(src)
    train, test = split_pairs(pairs, 0.2)
    assert [r["id"] for r in sides["test"]] == [p.id for p in test]
    assert sorted(r["id"] for r in sides["train"] + sides["dev"]) == sorted(p.id for p in train)
    assert {r["prompt"][0]["content"] for r in sides["test"]} == {split_key(p) for p in test}


def test_data_split_fractions_from_flags(tmp_path):
    src = tmp_path / "pairs.jsonl"
    n = _write_pairs(src, n_conversations=30, per_conversation=2)
    out = tmp_path / "split"
    assert main(["data", "split", str(src), "--out", str(out), "--test-fraction", "0.3",
                 "--dev-fraction", "0.2"]) == 0
    summary = json.loads((out / "split.json").read_text())
    assert summary["test_fraction"] == 0.3 and summary["dev_fraction"] == 0.2
    assert sum(summary["counts"].values()) == n
    _, test = split_pairs(load_preferences(src), 0.3)
    assert [r["id"] for r in _read(out / "test.jsonl")] == [p.id for p in test]


def test_data_split_refuses_fractions_over_one(tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    _write_pairs(src, n_conversations=4, per_conversation=1)
    assert main(["data", "split", str(src), "--out", str(tmp_path / "s"), "--test-fraction",
                 "0.7", "--dev-fraction", "0.5"]) == 2
    assert "dev_fraction" in capsys.readouterr().err
    assert not (tmp_path / "s" / "split.json").exists()


class _Stop(Exception):
    pass


def test_recipe_prompts_and_steer_policy_decide_what_is_sampled_and_labelled(tmp_path, monkeypatch):
    """``prompts`` draws the policy's training and test prompts from other sources than the
    reward dimensions' data (split the same way), and ``steer_policy`` samples and labels another
    model's replies: what the split and sample-efficiency experiments rely on."""
    from rewardprompt import labelling, sampling
    from rewardprompt.recipe import RecipeConfig, run_recipe
    from rewardprompt.runs import generations_file, write_jsonl

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write_pairs(a, n_conversations=60, per_conversation=1)
    b.write_text("".join(json.dumps({"prompt": f"Question {c}: which bird sings at dawn?",
                                     "chosen": "The robin.", "rejected": "No idea."}) + "\n"
                         for c in range(60)))
    seen = {}

    def fake_generate(cfg):
        seen["sampled_by"] = cfg.model
        write_jsonl(Path(cfg.run) / generations_file(cfg.label), [{"prompt": [], "response": "x"}])

    def fake_label(cfg):
        seen["clipped_by"] = cfg.policy
        raise _Stop

    monkeypatch.setattr(sampling, "run_generate", fake_generate)
    monkeypatch.setattr(labelling, "run_label", fake_label)
    cfg = RecipeConfig(out=str(tmp_path / "run"), data={"quality": str(a)}, prompts={"p": str(b)},
                       scorers={"quality": "synthetic:length:10"}, test_rm=False,
                       openers=["Sure"], label_pairs=5, eval_prompts=3, eval_split="test",
                       policy="the-trained-one", steer_policy="the-sampled-one", cache=False)
    try:
        run_recipe(cfg)
    except _Stop:
        pass
    assert seen == {"sampled_by": "the-sampled-one", "clipped_by": "the-sampled-one"}
    data = tmp_path / "run" / "data"
    label = _read(data / "label_pairs.jsonl")
    evals = _read(data / "eval_prompts.jsonl")
    firsts_b = {r["prompt"] for r in _read(b)}
    assert len(label) == 5 and len(evals) == 3
    # from b alone, and its train and test sides disjoint by the text of the first user turn
    assert {r["prompt"][0]["content"] for r in label} <= firsts_b
    assert {r["prompt"][0]["content"] for r in evals} <= firsts_b
    assert not {r["prompt"][0]["content"] for r in label} & {r["prompt"][0]["content"] for r in evals}
    # the reward model's own data stays a's, split as before
    assert {r["prompt"][0]["content"] for r in _read(data / "quality-train.jsonl")}.isdisjoint(firsts_b)
