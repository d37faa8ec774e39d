"""SFT keeps its config beside its checkpoints: a rerun reuses its model, another is refused."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rewardprompt.policy import sft as sft_mod
from rewardprompt.policy.meta import read_policy_meta
from rewardprompt.policy.sft import SFT_CONFIG, SFTConfig, run_sft
from rewardprompt.runs import atomic_write_json, file_hash, to_jsonable


@pytest.fixture
def labelled(tmp_path):
    path = tmp_path / "train.jsonl"
    replies = ["Mix flour, water, yeast and salt, then bake it.",
               "I'm sorry, I can't help with that request.",
               "Sure! Here is a list: first, second, third.",
               "The quick brown fox jumps over the lazy dog."]
    rows = [{"prompt": [{"role": "user", "content": f"How do I bake bread? ({i})"}],
             "response": r, "rewards": {"helpful": round(0.3 + 0.1 * i, 2)}}
            for i, r in enumerate(replies)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(data, out, model, **kw) -> SFTConfig:
    return SFTConfig(data=str(data), out=str(out), model=str(model), max_steps=2, save_steps=1,
                     batch_size=2, max_prompt_tokens=64, max_completion_tokens=16,
                     **kw)


def _no_training(*args, **kwargs):
    raise AssertionError("SFT trained again")


def test_same_config_returns_the_saved_metrics_without_training(tiny_policy, labelled, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "sft"
    cfg = _cfg(labelled, out, tiny_policy)
    first = run_sft(cfg)
    assert first["steps"] == 2 and first["examples"] == 4
    assert (out / "final" / "sft_metrics.json").is_file()
    assert not list(out.glob("checkpoint-*"))  # removed once the final model is complete
    saved = json.loads((out / SFT_CONFIG).read_text())
    assert saved == to_jsonable(cfg) | {"labels": file_hash(labelled)}  # and what it trained on
    monkeypatch.setattr(sft_mod, "_train", _no_training)
    assert run_sft(_cfg(labelled, out, tiny_policy)) == first
    # overwrite with an unchanged config discards nothing
    assert run_sft(_cfg(labelled, out, tiny_policy, overwrite=True)) == first


def test_another_config_is_refused_unless_overwrite(tiny_policy, labelled, tmp_path, monkeypatch):
    out = tmp_path / "sft"
    run_sft(_cfg(labelled, out, tiny_policy))
    changed = _cfg(labelled, out, tiny_policy, lr=5e-4)
    with monkeypatch.context() as m:
        m.setattr(sft_mod, "_train", _no_training)
        with pytest.raises(ValueError, match=r"changed: lr\)"):
            run_sft(changed)
    assert json.loads((out / SFT_CONFIG).read_text())["lr"] == 1e-3  # left as it was
    trained = []
    real_train = sft_mod._train
    monkeypatch.setattr(sft_mod, "_train", lambda *a: trained.append(1) or real_train(*a))
    again = run_sft(dataclasses.replace(changed, overwrite=True))
    assert trained == [1] and again["steps"] == 2
    assert json.loads((out / SFT_CONFIG).read_text())["lr"] == 5e-4
    assert read_policy_meta(out / "final")["config"]["lr"] == 5e-4
    assert run_sft(changed) == again  # the new model is now the one reused


def test_a_final_model_alone_is_checked_too(tiny_policy, labelled, tmp_path, monkeypatch):
    """A folder with a final model but no sft_config.json (an older run) is judged by the
    config in the model's metadata."""
    out = tmp_path / "sft"
    run_sft(_cfg(labelled, out, tiny_policy))
    (out / SFT_CONFIG).unlink()
    monkeypatch.setattr(sft_mod, "_train", _no_training)
    with pytest.raises(ValueError, match="changed: max_steps"):
        run_sft(dataclasses.replace(_cfg(labelled, out, tiny_policy), max_steps=3))
    assert run_sft(_cfg(labelled, out, tiny_policy))["steps"] == 2


def test_a_checkpoint_of_another_config_is_not_continued(tiny_policy, labelled, tmp_path,
                                                         monkeypatch):
    out = tmp_path / "sft"
    config_a = _cfg(labelled, out, tiny_policy)
    atomic_write_json(out / SFT_CONFIG, config_a)  # as an interrupted run of A leaves it
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1}')
    config_b = _cfg(labelled, out, tiny_policy, lora_r=4)
    monkeypatch.setattr(sft_mod, "_train", _no_training)
    with pytest.raises(ValueError, match=r"changed: lora_r\)") as exc:
        run_sft(config_b)
    assert "overwrite" in str(exc.value)
    assert (out / "checkpoint-1").is_dir()  # refused, not deleted
    # Only where it lives differs: the same run, moved, may continue.
    moved = dataclasses.replace(config_a, out=str(tmp_path / "elsewhere"))
    sft_mod._check_previous(moved, out, "sha256:any")


def test_a_model_trained_on_other_labels_is_not_reused(tiny_policy, labelled, tmp_path,
                                                       monkeypatch):
    """The same config over relabelled data: the saved model was trained on other labels."""
    out = tmp_path / "sft"
    cfg = _cfg(labelled, out, tiny_policy)
    run_sft(cfg)
    rows = [json.loads(line) for line in Path(labelled).read_text().splitlines()]
    rows[0]["rewards"]["helpful"] = 0.99
    Path(labelled).write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sft_mod, "_train", _no_training)
    with pytest.raises(ValueError, match=r"changed: labels\)"):
        run_sft(cfg)
