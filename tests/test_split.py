"""``rewardprompt data split``: train / dev / test by the hash of the first user turn."""
from __future__ import annotations

import json

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
