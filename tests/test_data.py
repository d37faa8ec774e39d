"""Preference data: HH parsing, generic formats, errors, skip_bad, the Hub path, splits."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rewardprompt.data import (SHIPPED, ConvertConfig, PreferencePair, assign_split, convert,
                               dialogue_to_text, load_preferences, parse_transcript,
                               read_preferences, shipped_path, split_key, split_pairs)
from rewardprompt.errors import DataError
from rewardprompt.runs import read_jsonl


def hh(*turns: str) -> str:
    """Alternating Human/Assistant turns in raw HH form."""
    speakers = ("Human", "Assistant")
    return "".join(f"\n\n{speakers[i % 2]}: {t}" for i, t in enumerate(turns))


HH_ROWS = [
    {"chosen": hh("What is 2+2?", "4."), "rejected": hh("What is 2+2?", "5.")},
    {"chosen": hh("Hi", "Hello! Human: is a word I know.", "Tell me a joke", "Why did the..."),
     "rejected": hh("Hi", "Hello! Human: is a word I know.", "Tell me a joke", "No.")},
]


def write_rows(path: Path, rows: list) -> Path:
    """Rows as JSONL; a str/bytes item is written verbatim as one line."""
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
             for r in rows]
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# ---------------------------------------------------------------- HH parsing and convert
def test_hh_parse_keeps_inline_markers_and_shared_prefix(tmp_path):
    pairs = load_preferences(write_rows(tmp_path / "hh.jsonl", HH_ROWS))
    assert pairs[0].prompt == [{"role": "user", "content": "What is 2+2?"}]
    assert (pairs[0].chosen, pairs[0].rejected) == ("4.", "5.")
    # "Human:" inside a reply without the blank line before it is text, not a turn.
    assert [m["role"] for m in pairs[1].prompt] == ["user", "assistant", "user"]
    assert pairs[1].prompt[1]["content"] == "Hello! Human: is a word I know."
    assert pairs[1].chosen == "Why did the..."


def test_hh_back_to_back_assistant_turns_are_merged(tmp_path):
    # Real HH rows hold consecutive Assistant turns; merging keeps roles alternating.
    row = {"chosen": "\n\nHuman: q\n\nAssistant: a1\n\nAssistant: a2",
           "rejected": "\n\nHuman: q\n\nAssistant: b"}
    (pair,) = load_preferences(write_rows(tmp_path / "x.jsonl", [row]))
    assert pair.prompt == [{"role": "user", "content": "q"}]
    assert pair.chosen == "a1\n\na2"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_convert_round_trip(tmp_path, suffix):
    src = write_rows(tmp_path / f"hh{suffix}", HH_ROWS)
    out = tmp_path / f"out{suffix}"
    res = convert(ConvertConfig(input=str(src), output=str(out)))
    assert res == {"n": 2, "skipped": {}}
    if suffix.endswith(".gz"):
        assert out.read_bytes()[:2] == b"\x1f\x8b"
    rows = read_jsonl(out)
    assert set(rows[0]) == {"id", "prompt", "chosen", "rejected"}
    # Structured output reads back identically, and converting it again changes nothing.
    assert load_preferences(out) == load_preferences(src)
    out2 = tmp_path / f"out2{suffix}"
    convert(ConvertConfig(input=str(out), output=str(out2)))
    assert read_jsonl(out2) == rows


def test_dialogue_to_text_round_trip():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}]
    text = dialogue_to_text(msgs)
    assert text == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye"
    assert parse_transcript(text) == msgs


# ---------------------------------------------------------------- generic formats
def test_generic_formats(tmp_path):
    rows = [
        {"prompt": "  Name a colour. ", "chosen": " Blue. ", "rejected": "Dog."},
        {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}], "chosen": "good", "rejected": "bad"},
        # UltraFeedback on the Hub: replies are the whole message list.
        {"prompt": "Q?", "chosen": [{"role": "user", "content": "Q?"},
                                    {"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "no"}]},
        # No prompt, two message lists: the prompt is their shared history.
        {"chosen": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "y"}],
         "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "n"}]},
        {"id": "my-id", "prompt": "P", "chosen": "c", "rejected": "r"},
    ]
    p = load_preferences(write_rows(tmp_path / "g.jsonl", rows))
    assert p[0].prompt == [{"role": "user", "content": "Name a colour."}]
    assert (p[0].chosen, p[0].rejected) == ("Blue.", "Dog.")
    assert [m["content"] for m in p[1].prompt] == ["a", "b", "c"]
    assert (p[2].prompt, p[2].chosen, p[2].rejected) == ([{"role": "user", "content": "Q?"}],
                                                         "yes", "no")
    assert (p[3].prompt[0]["content"], p[3].chosen, p[3].rejected) == ("Q2", "y", "n")
    assert p[4].id == "my-id"
    # Ids without an `id` field are a stable content hash, unique per pair.
    assert p[0].id == load_preferences(tmp_path / "g.jsonl")[0].id
    assert len({x.id for x in p}) == len(p)
    assert all(PreferencePair.from_dict(x.to_dict()) == x for x in p)


# ---------------------------------------------------------------- errors
GOOD = {"prompt": "ok", "chosen": "a", "rejected": "b"}
ERRORS = [
    ("json", b'{"prompt": "x", "chosen": ', None),
    ("encoding", b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}', None),
    ("missing_field", {"prompt": "x", "chosen": "a"}, "rejected"),
    ("missing_field", {"prompt": "x", "chosen": 3, "rejected": "b"}, "chosen"),
    ("no_final_assistant", {"chosen": hh("q", "a", "more?"), "rejected": hh("q", "b")}, "chosen"),
    ("no_final_assistant", {"chosen": hh("q", "a"), "rejected": hh("q")}, "rejected"),
    ("prefix_mismatch", {"chosen": hh("q", "a"), "rejected": hh("other q", "b")}, "rejected"),
    ("empty_reply", {"chosen": hh("q", "a"), "rejected": hh("q", "  ")}, "rejected"),
    ("empty_reply", {"prompt": "q", "chosen": "", "rejected": "b"}, "chosen"),
    ("malformed_dialogue", {"chosen": "\n\nAssistant: hi\n\nHuman: q\n\nAssistant: a",
                            "rejected": hh("q", "b")}, "chosen"),
    ("malformed_dialogue", {"prompt": [{"role": "system", "content": "s"}], "chosen": "a",
                            "rejected": "b"}, "prompt"),
    ("malformed_dialogue", {"prompt": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "a"}],
                            "chosen": "a", "rejected": "b"}, "prompt"),
]


@pytest.mark.parametrize("code,bad,field", ERRORS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_errors_name_file_line_field(tmp_path, code, bad, field):
    path = write_rows(tmp_path / "bad.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    err = info.value
    assert (err.code, err.line, err.field) == (code, 2, field)
    msg = str(err)
    assert str(path) in msg and "line 2" in msg
    if field is not None:
        assert f"field '{field}'" in msg


def test_skip_bad_counts(tmp_path, capsys):
    bad = [b for _, b, _ in ERRORS]
    path = write_rows(tmp_path / "mixed.jsonl", [GOOD, *bad, GOOD, "", HH_ROWS[0]])
    pairs, skipped = read_preferences(path, skip_bad=True)
    assert len(pairs) == 3
    expected: dict[str, int] = {}
    for code, _, _ in ERRORS:
        expected[code] = expected.get(code, 0) + 1
    assert dict(skipped) == expected
    assert len(load_preferences(path, skip_bad=True, limit=2)) == 2
    res = convert(ConvertConfig(input=str(path), output=str(tmp_path / "o.jsonl"), skip_bad=True))
    assert res == {"n": 3, "skipped": expected}
    assert "empty_reply=2" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 3


def test_missing_file_and_all_bad(tmp_path):
    with pytest.raises(DataError, match="no such file") as info:
        load_preferences(tmp_path / "nope.jsonl")
    assert info.value.code == "not_found"
    path = write_rows(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "a"}])
    with pytest.raises(DataError, match="no usable preference pairs") as info:
        load_preferences(path, skip_bad=True)
    assert info.value.code == "empty"
    with pytest.raises(DataError):
        shipped_path("nope")


# ---------------------------------------------------------------- Hub path, offline
def test_hub_path_on_local_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache", raising=False)
    folder = tmp_path / "hh" / "harmless-base"
    folder.mkdir(parents=True)
    bad = {"chosen": hh("q", "a"), "rejected": hh("q")}
    write_rows(folder / "train.jsonl", [*HH_ROWS, bad])
    pairs, skipped = read_preferences(str(tmp_path / "hh"), data_dir="harmless-base",
                                      split="train", skip_bad=True)
    assert pairs == load_preferences(write_rows(tmp_path / "same.jsonl", HH_ROWS))
    assert dict(skipped) == {"no_final_assistant": 1}
    with pytest.raises(DataError) as info:
        load_preferences(str(tmp_path / "hh"), data_dir="harmless-base", split="train")
    assert info.value.line == 3 and str(tmp_path / "hh") in str(info.value)


# ---------------------------------------------------------------- shipped data
def test_shipped_files_load():
    assert set(SHIPPED) == {"hh-harmless", "hh-helpful-base", "hh-helpful-online",
                            "hh-helpful-rejection-sampled", "ultrafeedback", "ultrafeedback-eval"}
    assert all(shipped_path(n).is_file() for n in SHIPPED)
    assert (shipped_path("hh-harmless").parent / "LICENSE-ultrafeedback").is_file()
    assert len(load_preferences("ultrafeedback-eval")) == 200
    # 1000 rows in train; two have an empty reply (one chosen, one rejected).
    uf, uf_skipped = read_preferences("ultrafeedback", skip_bad=True)
    assert len(uf) + sum(uf_skipped.values()) == 1000
    assert dict(uf_skipped) == {"empty_reply": 2}
    # 2312 HH rows; four end in an empty chosen reply.
    hh_pairs, hh_skipped = read_preferences("hh-harmless", skip_bad=True)
    assert (len(hh_pairs), dict(hh_skipped)) == (2308, {"empty_reply": 4})
    assert all(p.prompt[-1]["role"] == "user" for p in hh_pairs)
    assert len(load_preferences("hh-harmless", skip_bad=True, limit=10)) == 10


def test_shipped_hh_helpful_files():
    """Anthropic's helpful files (released as test splits, here the whole corpus): rows that
    cannot be read and pairs whose chosen equals rejected are counted, never used."""
    from rewardprompt.data import drop_identical

    expected = {"hh-helpful-base": (2350, {"empty_reply": 4}, 2),
                "hh-helpful-online": (1132, {"empty_reply": 3, "no_final_assistant": 2}, 2),
                "hh-helpful-rejection-sampled": (2749, {}, 32)}
    for name, (n, bad, identical) in expected.items():
        pairs, skipped = read_preferences(name, skip_bad=True)
        kept, n_identical = drop_identical(pairs, name, drop=True)
        assert (len(pairs), dict(skipped), n_identical) == (n, bad, identical), name
        assert all(p.chosen != p.rejected for p in kept)


# ---------------------------------------------------------------- splits
def _pair(first: str, i: int) -> PreferencePair:
    return PreferencePair(id=f"{first}-{i}", chosen="c", rejected="r", prompt=[
        {"role": "user", "content": first}, {"role": "assistant", "content": f"a{i}"},
        {"role": "user", "content": f"follow-up {i}"}])


def test_split_is_deterministic_and_groups_conversations():
    pairs = [_pair(f"question {q}", i) for q in range(200) for i in range(3)]
    train, test = split_pairs(pairs)
    assert (train, test) == split_pairs(list(pairs))
    assert len(train) + len(test) == len(pairs)
    assert {split_key(p) for p in train}.isdisjoint({split_key(p) for p in test})
    assert 0.1 < len(test) / len(pairs) < 0.3
    assert split_key(_pair("  question 1 ", 0)) == "question 1"
    # Another salt reshuffles; fractions 0 and 1 put everything on one side.
    assert [assign_split(p, salt="x") for p in pairs] != [assign_split(p) for p in pairs]
    assert split_pairs(pairs, test_fraction=0.0)[1] == []
    assert split_pairs(pairs, test_fraction=1.0)[0] == []
    with pytest.raises(ValueError):
        assign_split(pairs[0], test_fraction=1.5)
