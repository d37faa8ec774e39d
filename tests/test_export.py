"""``rewardprompt data export``: cleaned preference data by side, with a dataset card."""
from __future__ import annotations

import gzip
import json

from rewardprompt.cli import main
from rewardprompt.data.preference import SHIPPED, load_preferences, split_key


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_export_own_file_by_side_with_card(tmp_path, capsys):
    rows = []
    for c in range(30):
        first = f"Conversation {c}: what should I plant in spring, kind {c}?"
        for k in range(2):
            rows.append({"prompt": [{"role": "user", "content": first},
                                    {"role": "assistant", "content": "Which climate?"},
                                    {"role": "assistant", "content": "And how much sun?"},
                                    {"role": "user", "content": f"Temperate, follow-up {k}."}],
                         "chosen": f"Peas and lettuce ({c}-{k}).", "rejected": "No idea."})
    rows.append({"prompt": "same?", "chosen": "Same.", "rejected": "Same."})  # no preference
    rows.append({"prompt": "empty?", "chosen": "", "rejected": "Not empty."})  # empty reply
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "export"
    assert main(["data", "export", str(out), "--sources", str(src)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    folder = out / summary["sources"][str(src)]["folder"]
    sides = {s: _read(folder / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert sum(map(len, sides.values())) == 60
    assert summary["sources"][str(src)]["skipped"] == {"empty_reply": 1, "identical_pair": 1}
    firsts = {s: {split_key_of(r) for r in v} for s, v in sides.items()}
    assert not (firsts["train"] & firsts["test"] or firsts["train"] & firsts["dev"]
                or firsts["dev"] & firsts["test"])
    row = sides["train"][0]
    assert set(row) == {"id", "prompt", "chosen", "rejected", "split", "split_point", "source"}
    # Back-to-back assistant turns were merged: roles alternate, the prompt ends with the user.
    roles = [m["role"] for m in row["prompt"]]
    assert roles == ["user", "assistant", "user"]
    assert row["source"]["line"] >= 1
    card = (out / "README.md").read_text()
    assert "| " + str(src) + " | " in card and "identical_pair 1" in card
    # Its own file is not HH, so no HH license is copied next to it.
    assert not (out / "LICENSE-hh-rlhf").exists()


def split_key_of(row):
    return next(m["content"] for m in row["prompt"] if m["role"] == "user")


def test_export_shipped_hh_keeps_every_pair_once(tmp_path):
    out = tmp_path / "export"
    assert main(["data", "export", str(out), "--sources", "hh-harmless"]) == 0
    exported = [r for s in ("train", "dev", "test") for r in _read(out / "hh-harmless" / f"{s}.jsonl")]
    with gzip.open(SHIPPED["hh-harmless"], "rt") as fh:
        n_raw = sum(1 for line in fh if line.strip())
    summary = json.loads((out / "export.json").read_text())["sources"]["hh-harmless"]
    assert len(exported) + sum(summary["skipped"].values()) == n_raw
    assert len({r["id"] for r in exported}) == len(exported)
    # The sides are the project's own split: the same pair has the same side as load+assign.
    pairs = {p.id: p for p in load_preferences("hh-harmless", skip_bad=True)}
    some = exported[:50]
    assert all(split_key(pairs[r["id"]]) == split_key_of(r) for r in some)
    assert (out / "LICENSE-hh-rlhf").read_text().startswith("MIT")


def test_export_labelled_in_each_providers_format(tmp_path):
    labels = tmp_path / "train.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}?"},
                        {"role": "assistant", "content": "Which one?"},
                        {"role": "user", "content": f"The {i}th."}],
             "response": f"Answer {i}.", "rewards": {"helpful": i / 12, "harmless": 1 - i / 12}}
            for i in range(12)]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "export"
    assert main(["data", "export", str(out), "--sources", "--labels", str(labels)]) == 0
    summary = json.loads((out / "export.json").read_text())
    assert summary["finetune"] == {"openai": {"sft.jsonl": 12}, "together": {"sft.jsonl": 12}}
    openai_rows = _read(out / "finetune" / "openai" / "sft.jsonl")
    together_rows = _read(out / "finetune" / "together" / "sft.jsonl")
    msgs = openai_rows[3]["messages"]
    # The block sits in the prompt (bottom of the last user turn), with this row's labels.
    assert "<REWARD>" in msgs[-2]["content"] and "0.25" in msgs[-2]["content"]
    assert msgs[-1] == {"role": "assistant", "content": "Answer 3.", "weight": 1}
    # OpenAI weighs assistant turns only; Together every turn: the loss is on the reply alone.
    assert [m.get("weight") for m in msgs] == [None, 0, None, 1]
    assert [m.get("weight") for m in together_rows[3]["messages"]] == [0, 0, 0, 1]
    assert "Fine-tuning files" in (out / "README.md").read_text()


def test_export_refuses_the_reply_position(tmp_path, capsys):
    labels = tmp_path / "train.jsonl"
    labels.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi?"}],
                                  "response": "Hello.", "rewards": {"helpful": 0.5}}) + "\n")
    code = main(["data", "export", str(tmp_path / "x"), "--sources", "--labels", str(labels),
                 "--template", "position", "reply"])
    assert code == 2 and "reply" in capsys.readouterr().err
