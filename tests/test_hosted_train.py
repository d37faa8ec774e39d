"""Hosted fine-tuning (sft --backend openai|together) against fake servers on 127.0.0.1.

The fakes (tests/fake_hosted.py) are driven through the official clients, with faults, kills
between the stage's steps and Ctrl-C; every test checks what the fake recorded: one upload, one
job, nothing lost, and a clear message where the stage cannot go on.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fake_hosted import OpenAIFake, TogetherFake
from rewardprompt.errors import DataError
from rewardprompt.hosted import chatfile, train
from rewardprompt.hosted.base import HostedConfig, HostedError
from rewardprompt.hosted.chatfile import (CharTokens, pairs_from_samples, validate_file,
                                          with_weights)
from rewardprompt.policy.sft import SFTConfig, _comparable, run_sft
from rewardprompt.runs import to_jsonable
from rewardprompt.template import TemplateError

KEY = "sk-rp-TEST-7f3e9c2a1b5d4e8f-DISTINCTIVE"
MODELS = {"openai": "gpt-4o-mini-2024-07-18", "together": "meta-llama/Tiny-Fake"}
FAKES = {"openai": OpenAIFake, "together": TogetherFake}
#: Fault paths: the job creation / listing, and one job's own URL (its status poll).
JOBS = r"/v1/fine(_tuning/jobs|-tunes)$"
JOB = r"/v1/fine(_tuning/jobs|-tunes)/ft(job)?-\d+$"


class Killed(BaseException):
    """A kill -9 stand-in: nothing in the stage catches it."""


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)


@pytest.fixture(params=["openai", "together"])
def provider(request):
    return request.param


@pytest.fixture
def fake(tmp_path, provider):
    with FAKES[provider](tmp_path / "fake", api_key=KEY) as f:
        yield f


def write_labels(run: Path, n: int = 12, dims: tuple[str, ...] = ("helpful",)) -> Path:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"How do I bake bread number {i}?"}]
        if i % 3 == 0:  # a multi-turn dialogue: its earlier reply must not be trained
            prompt = [{"role": "user", "content": "Hi there."},
                      {"role": "assistant", "content": "Hello! How can I help?"}] + prompt
        rows.append({"id": f"p{i}:chosen", "prompt": prompt,
                     "response": f"Mix flour, water and yeast, then bake loaf {i}.",
                     "rewards": {d: round(0.05 + 0.9 * i / n, 4) for d in dims}})
    path = run / "label" / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(run: Path, fake, provider: str, *, sft: dict | None = None, **hosted) -> SFTConfig:
    h = dict(base_model=MODELS[provider], base_url=fake.url, poll_interval=0.01,
             poll_max_interval=0.02, timeout=2.0, max_retries=2)
    return SFTConfig(run=str(run), backend=provider, hosted=HostedConfig(**{**h, **hosted}),
                     **(sft or {}))


def out_dir(run: Path, name: str = "conditioned") -> Path:
    return run / "sft" / name


def training_rows(out: Path) -> list[dict]:
    (path,) = out.glob("rewardprompt-*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- the whole stage
def test_sft_job_end_to_end(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    result = run_sft(config(run, fake, provider))
    out = out_dir(run)
    assert len(fake.uploads) == 1 and len(fake.creations) == 1
    assert result["model_id"] and result["job_id"] == next(iter(fake.jobs))
    assert result["examples"] == 12 and result["tokens_estimated"] > 0
    assert result["cost"] == {"provider": provider, "model": MODELS[provider],
                              "method": "supervised", "trained_tokens": result["trained_tokens"],
                              "prompt_tokens": 0, "completion_tokens": 0}
    assert result["trained_tokens"] > 0 and result["prompt_loss"]["final_reply_only"]
    # The file the provider got is the one in out, named by its hash.
    (path,) = out.glob("rewardprompt-supervised-*.jsonl")
    assert fake.data[fake.uploads[0]] == path.read_bytes()
    rows = training_rows(out)
    first = rows[0]["messages"]
    assert first[2]["content"].endswith("<REWARD>\nHelpful reward: 0.05<SOS>")  # bottom block
    assert first[-1] == {"role": "assistant", "content": "Mix flour, water and yeast, then bake "
                         "loaf 0.", "weight": 1}
    assert first[1]["weight"] == 0  # the earlier reply is not trained
    if provider == "openai":
        assert "weight" not in first[0]  # OpenAI takes weights on assistant messages only
        assert fake.creations[0]["method"]["type"] == "supervised"
        assert fake.creations[0]["metadata"]["rewardprompt_key"]
    else:
        assert first[0]["weight"] == 0
        body = fake.creations[0]
        assert body["training_method"] == {"method": "sft", "train_on_inputs": False}
        assert body["training_type"]["lora_r"] == 16 and fake.estimates and fake.limit_reads
    meta = json.loads((out / "final" / "rewardprompt.json").read_text())
    assert meta["hosted"]["model_id"] == result["model_id"]
    assert meta["hosted"]["job_id"] == result["job_id"]
    assert meta["hosted"]["base_url"] == (fake.url if provider == "openai" else fake.root + "/v1")
    assert meta["conditioned"] is True and meta["template"]["dimensions"] == ["helpful"]
    assert meta["max_prompt_tokens"] == 192 and meta["labels"].startswith("sha256:")
    state = json.loads((out / "hosted_job.json").read_text())
    assert state["status"] == "succeeded" and state["model_id"] == result["model_id"]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len({e["id"] for e in events}) == len(events) == len(fake.events[result["job_id"]])
    assert json.loads((out / "checkpoints.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sft"]["conditioned"]["model_id"] == result["model_id"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sft_conditioned"]["done"]
    # The same command again: the recorded result, nothing uploaded or paid again.
    n_requests = len(fake.requests)
    assert run_sft(config(run, fake, provider)) == result
    assert len(fake.uploads) == 1 and len(fake.creations) == 1
    assert len(fake.requests) == n_requests


def test_unconditioned_file_has_no_block(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    run_sft(config(run, fake, provider, sft={"conditioned": False}))
    rows = training_rows(out_dir(run, "uncond_sft"))
    assert not any("<REWARD>" in m["content"] for r in rows for m in r["messages"])
    meta = json.loads((out_dir(run, "uncond_sft") / "final" / "rewardprompt.json").read_text())
    assert meta["conditioned"] is False


def test_top_position_and_train_on_prompt(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    result = run_sft(config(run, fake, provider, train_on_prompt=True,
                            sft={"template": {"position": "top"}}))
    first = training_rows(out_dir(run))[0]["messages"]
    assert first[0]["content"].startswith("<REWARD>\nHelpful reward: 0.05<SOS>\nHi there.")
    assert not any("weight" in m for m in first)
    assert result["prompt_loss"]["final_reply_only"] is False
    if provider == "together":
        assert fake.creations[0]["training_method"]["train_on_inputs"] is True


def test_reply_position_is_refused(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    with pytest.raises(TemplateError, match="--template.position bottom"):
        run_sft(config(run, fake, provider, sft={"template": {"position": "reply"}}))
    assert fake.uploads == [] and fake.creations == []


def test_the_prompt_budget_cuts_by_characters(tmp_path, fake, provider):
    run = tmp_path / "run"
    path = write_labels(run)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["prompt"] = [{"role": "user", "content": "old turn " * 50},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "word " * 400}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_sft(config(run, fake, provider, sft={"max_prompt_tokens": 64}))
    first = training_rows(out_dir(run))[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]  # the oldest turns went first
    assert first[0]["content"].endswith("<SOS>")  # the block survives the cut
    assert len(first[0]["content"]) <= 64 * chatfile.CHARS_PER_TOKEN


# ---------------------------------------------------------------- validation
def test_too_few_examples(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run, n=9)
    with pytest.raises(DataError, match="9 examples; the provider needs at least 10") as err:
        run_sft(config(run, fake, provider))
    assert "rewardprompt-supervised-" in str(err.value.file)
    assert fake.uploads == []


@pytest.mark.parametrize("bad, field, reason", [
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"},
                 {"role": "user", "content": "q"}]}, "messages[1].role", "system message"),
    ({"prompt": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "messages[1].role", "alternate"),
    ({"prompt": [{"role": "tool", "content": "a"}, {"role": "user", "content": "q"}]},
     "messages[0].role", "role must be"),
    ({"response": "   "}, "messages[1].content", "non-empty"),
])
def test_malformed_dialogues_are_named(tmp_path, fake, provider, bad, field, reason):
    run = tmp_path / "run"
    path = write_labels(run)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[4].update(bad)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=reason) as err:
        run_sft(config(run, fake, provider, sft={"template": {"position": "top"}}))
    assert (err.value.line, err.value.field) == (5, field)
    assert "rewardprompt-supervised-" in str(err.value.file)
    assert fake.uploads == []


def test_example_token_limit(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    with pytest.raises(DataError, match="over the limit of 20 per example") as err:
        run_sft(config(run, fake, provider, max_example_tokens=20))
    assert err.value.line == 1 and fake.uploads == []


def test_validate_file_rules(tmp_path):
    def check(row: dict, method: str = "supervised", roles=("assistant",)) -> DataError:
        path = tmp_path / "f.jsonl"
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(DataError) as err:
            validate_file(path, method=method, max_file_bytes=10**6, max_example_tokens=10**4,
                          min_examples=1, tok=CharTokens(), weight_roles=roles)
        return err.value

    user, reply = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    e = check({"messages": [user, {**reply, "weight": 2}]})
    assert e.field == "messages[1].weight" and "0 or 1" in e.reason
    assert check({"messages": [{**user, "weight": 0}, reply]}).field == "messages[0].weight"
    assert "nothing" in check({"messages": [user, {**reply, "weight": 0}]}).reason
    e = check({"messages": [user, reply, user]})
    assert e.field == "messages[2].role" and "end with an assistant" in e.reason
    assert check({"messages": [reply, user]}).field == "messages[0].role"
    assert check({"messages": [user]}).field == "messages[0].role"
    dpo = {"input": {"messages": [user]}, "preferred_output": [reply],
           "non_preferred_output": [{"role": "assistant", "content": "b"}]}
    assert check({**dpo, "preferred_output": []}, "dpo").field == "preferred_output"
    assert check({**dpo, "non_preferred_output": [reply]}, "dpo").reason.startswith("the preferred")
    assert check({**dpo, "input": {"messages": [user, reply]}}, "dpo").field == "input.messages[1].role"
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"messages": [user, reply]}) + "\n")
    with pytest.raises(DataError, match="over the provider's limit"):
        validate_file(path, method="supervised", max_file_bytes=10, max_example_tokens=10,
                      min_examples=1, tok=CharTokens(), weight_roles=())


def test_weights_mark_the_final_reply_only():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "final"}]
    assert [m.get("weight") for m in with_weights(msgs, ("assistant",))] == [None, None, 0, None, 1]
    assert [m["weight"] for m in with_weights(msgs, ("system", "user", "assistant"))] == [0, 0, 0, 0, 1]


# ---------------------------------------------------------------- DPO
def write_pairs(path: Path, n: int = 11) -> Path:
    rows = [{"id": f"pair{i}", "prompt": f"Tell me about tea number {i}.",
             "chosen": f"Tea {i} is a drink brewed from leaves.", "rejected": "No."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_samples(path: Path, n_prompts: int = 12, models: tuple[str, ...] = ("conditioned",)) -> Path:
    rows = []
    for m in models:
        for i in range(n_prompts):
            for j, score in enumerate((0.2, 0.9, 0.5)):
                rows.append({"id": i, "model": m,
                             "prompt": [{"role": "user", "content": f"Question {i}?"}],
                             "response": f"Answer {i}.{j}",
                             "actual": {"helpful": round(score + i / 1000, 4)}})
    rows.append({"id": "lonely", "model": models[0],
                 "prompt": [{"role": "user", "content": "Alone?"}], "response": "yes",
                 "actual": {"helpful": 0.5}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dpo_from_preference_pairs(tmp_path, fake, provider):
    run = tmp_path / "run"
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    result = run_sft(config(run, fake, provider, method="dpo", dpo_data=str(pairs), beta=0.2,
                            sft={"conditioned": False}))
    rows = training_rows(out_dir(run, "uncond_sft"))
    assert len(rows) == 11 and result["method"] == "dpo" and result["dpo"]["pairs"] == 11
    assert rows[0] == {"input": {"messages": [{"role": "user",
                                               "content": "Tell me about tea number 0."}]},
                       "preferred_output": [{"role": "assistant",
                                             "content": "Tea 0 is a drink brewed from leaves."}],
                       "non_preferred_output": [{"role": "assistant", "content": "No."}]}
    body = fake.creations[0]
    if provider == "openai":
        assert body["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}
    else:
        assert body["training_method"]["method"] == "dpo"
        assert body["training_method"]["dpo_beta"] == 0.2
    assert result["cost"]["method"] == "dpo"


def test_dpo_pairs_cannot_be_conditioned(tmp_path, fake, provider):
    with pytest.raises(HostedError, match="--no-conditioned"):
        run_sft(config(tmp_path / "run", fake, provider, method="dpo",
                       dpo_data=str(write_pairs(tmp_path / "p.jsonl"))))


def test_dpo_from_own_samples_conditioned(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_samples(run / "eval" / "scores.jsonl")
    result = run_sft(config(run, fake, provider, method="dpo", dpo_from="samples"))
    rows = training_rows(out_dir(run))
    assert len(rows) == 24  # reward-augmented: two rows per pair
    assert result["dpo"]["skipped"] == {"single_sample": 1} and result["dpo"]["pairs"] == 12
    good, flipped = rows[0], rows[1]
    assert good["input"]["messages"][0]["content"].endswith("Helpful reward: 0.90<SOS>")
    assert good["preferred_output"][0]["content"] == "Answer 0.1"
    assert good["non_preferred_output"][0]["content"] == "Answer 0.0"
    assert flipped["input"]["messages"][0]["content"].endswith("Helpful reward: 0.20<SOS>")
    assert flipped["preferred_output"][0]["content"] == "Answer 0.0"


def test_pairs_from_samples_rules(tmp_path):
    path = write_samples(tmp_path / "s.jsonl", models=("a", "b"))
    with pytest.raises(DataError, match="--hosted.dpo-model"):
        pairs_from_samples(path, rewards="actual", dimension=None)
    pairs, found = pairs_from_samples(path, rewards="actual", dimension=None, model="b")
    assert len(pairs) == 12 and pairs[0].chosen == "Answer 0.1" and pairs[0].rejected == "Answer 0.0"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r["actual"] = {"helpful": 0.5, "harmless": 0.1}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="--hosted.dpo-dimension"):
        pairs_from_samples(path, rewards="actual", dimension=None, model="a")
    with pytest.raises(DataError, match="no prompt has two samples"):
        pairs_from_samples(path, rewards="actual", dimension="helpful", model="a")  # all tie


# ---------------------------------------------------------------- faults
@pytest.mark.parametrize("kind", ["429", "503", "500", "malformed", "drop"])
def test_transient_faults_on_every_kind_of_request(tmp_path, fake, provider, kind):
    """A fault on the first listing, the upload, the job creation and the first poll: the
    stage retries each and pays once."""
    run = tmp_path / "run"
    write_labels(run)
    for method, path in (("GET", r"/v1/files$"), ("POST", r"/v1/files$"),
                         ("POST", JOBS),
                         ("GET", JOB)):
        fake.fault(kind, method, path)
    result = run_sft(config(run, fake, provider, max_retries=3))
    assert result["model_id"]
    assert len(fake.uploads) == 1 and len(fake.creations) == 1


@pytest.mark.parametrize("kind", ["drop", "malformed", "500", "hang"])
def test_lost_answers_to_creations_do_not_pay_twice(tmp_path, fake, provider, kind):
    """The server uploads the file and creates the job, then the answer is lost: the stage
    finds what was made instead of making it again."""
    run = tmp_path / "run"
    write_labels(run)
    upload = r"/v1/files$" if provider == "openai" else r"/upload/"
    fake.fault(kind, "POST" if provider == "openai" else "PUT", upload, after=True, hang_s=0.6)
    fake.fault(kind, "POST", JOBS, after=True, hang_s=0.6)
    result = run_sft(config(run, fake, provider, timeout=0.3, max_retries=3))
    assert result["model_id"]
    assert len(fake.uploads) == 1 and len(fake.creations) == 1


def test_hang_past_the_client_timeout_while_polling(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    fake.fault("hang", "GET", JOB, times=2, hang_s=0.6)
    result = run_sft(config(run, fake, provider, timeout=0.3, max_retries=1))
    assert result["model_id"] and len(fake.creations) == 1


def test_persistent_server_errors_stop_with_a_clear_message(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    fake.fault("500", "GET", JOB, times=100)
    with pytest.raises(HostedError, match="goes on at the provider: run the same command again"):
        run_sft(config(run, fake, provider, max_retries=0))
    state = json.loads((out_dir(run) / "hosted_job.json").read_text())
    assert state["job_id"] and len(fake.creations) == 1
    fake.faults.clear()
    assert run_sft(config(run, fake, provider))["job_id"] == state["job_id"]
    assert len(fake.creations) == 1


def test_wrong_key_is_not_retried(tmp_path, fake, provider, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    monkeypatch.setenv("TOGETHER_API_KEY", "sk-wrong")
    run = tmp_path / "run"
    write_labels(run)
    with pytest.raises(HostedError, match="401"):
        run_sft(config(run, fake, provider))
    assert fake.uploads == [] and fake.auth_failures <= 2


# ---------------------------------------------------------------- kills and Ctrl-C
@pytest.mark.parametrize("step", ["uploaded", "created"])
def test_a_kill_between_steps_pays_once(tmp_path, fake, provider, monkeypatch, step):
    run = tmp_path / "run"
    write_labels(run)

    def kill(at: str) -> None:
        if at == step:
            raise Killed(at)

    monkeypatch.setattr(train, "_after", kill)
    with pytest.raises(Killed):
        run_sft(config(run, fake, provider))
    state = json.loads((out_dir(run) / "hosted_job.json").read_text())
    assert "file_id" not in state if step == "uploaded" else "job_id" not in state
    monkeypatch.setattr(train, "_after", lambda at: None)
    result = run_sft(config(run, fake, provider))
    assert result["model_id"]
    assert len(fake.uploads) == 1 and len(fake.creations) == 1


def interrupt_on_poll(monkeypatch, n: int = 1) -> None:
    """Ctrl-C during the n-th wait between two polls."""
    calls = {"n": 0}

    def sleep(seconds: float) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_sleep", sleep)


def test_ctrl_c_while_polling_keeps_the_job(tmp_path, fake, provider, monkeypatch):
    run = tmp_path / "run"
    write_labels(run)
    interrupt_on_poll(monkeypatch)
    with pytest.raises(HostedError, match=r"goes on at the provider .*--hosted.cancel") as err:
        run_sft(config(run, fake, provider))
    job = next(iter(fake.jobs))
    assert job in str(err.value)
    state = json.loads((out_dir(run) / "hosted_job.json").read_text())
    assert state["job_id"] == job and state["status"] not in ("succeeded", "failed")
    monkeypatch.setattr(train, "_sleep", lambda s: None)
    result = run_sft(config(run, fake, provider))  # the same command resumes that job
    assert result["job_id"] == job
    assert len(fake.uploads) == 1 and len(fake.creations) == 1


def test_cancel_the_recorded_job(tmp_path, fake, provider, monkeypatch):
    run = tmp_path / "run"
    write_labels(run)
    interrupt_on_poll(monkeypatch)
    with pytest.raises(HostedError):
        run_sft(config(run, fake, provider))
    monkeypatch.setattr(train, "_sleep", lambda s: None)
    result = run_sft(config(run, fake, provider, cancel=True))
    job = next(iter(fake.jobs))
    assert result["cancelled"] and result["job_id"] == job
    assert fake.jobs[job]["status"] in ("cancelled", "cancel_requested")
    with pytest.raises(HostedError, match="cancelled. Pass --overwrite"):
        run_sft(config(run, fake, provider))
    assert len(fake.creations) == 1
    with pytest.raises(HostedError, match="nothing to cancel"):
        run_sft(config(tmp_path / "other", fake, provider, cancel=True))


def test_max_wait_leaves_the_job_to_resume(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    fake.PATH = fake.PATH[:1] * 3 + fake.PATH  # a job that takes a while
    with pytest.raises(HostedError, match="--hosted.max-wait"):
        run_sft(config(run, fake, provider, max_wait=0.015, poll_interval=0.01,
                       poll_max_interval=0.01))
    assert run_sft(config(run, fake, provider))["model_id"]
    assert len(fake.creations) == 1


# ---------------------------------------------------------------- ends other than success
def test_failed_job(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    fake.outcome = "fail"
    with pytest.raises(HostedError, match="failed: the training file has too few usable"):
        run_sft(config(run, fake, provider))
    with pytest.raises(HostedError, match="Pass --overwrite to start a new job"):
        run_sft(config(run, fake, provider))  # no second job for the same command
    assert len(fake.creations) == 1
    fake.outcome = "succeed"
    result = run_sft(config(run, fake, provider, sft={"overwrite": True}))
    assert result["model_id"] and len(fake.creations) == 2
    assert len(fake.uploads) == 1  # the file was found, not uploaded again


def test_job_cancelled_at_the_provider(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    fake.outcome = "cancel"
    with pytest.raises(HostedError, match="was cancelled"):
        run_sft(config(run, fake, provider))


def test_changed_inputs_are_not_reused(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    first = run_sft(config(run, fake, provider))
    with pytest.raises(HostedError, match="changed: parameters"):
        run_sft(config(run, fake, provider, n_epochs=3))
    path = write_labels(run, n=13)
    assert path.is_file()
    with pytest.raises(HostedError, match="changed: training_file"):
        run_sft(config(run, fake, provider))
    second = run_sft(config(run, fake, provider, sft={"overwrite": True}))
    assert second["job_id"] != first["job_id"]
    assert len(fake.uploads) == 2 and len(fake.creations) == 2


def test_a_local_model_in_out_is_not_replaced(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    out = out_dir(run)
    out.mkdir(parents=True)
    (out / "sft_config.json").write_text("{}")
    with pytest.raises(HostedError, match="locally trained"):
        run_sft(config(run, fake, provider))
    assert run_sft(config(run, fake, provider, sft={"overwrite": True}))["model_id"]


def test_local_runs_compare_as_before():
    """A local folder's sft_config.json from before hosted training (no backend, no hosted)
    is the same config as today's local default; a hosted one is not."""
    saved = {k: v for k, v in to_jsonable(SFTConfig()).items() if k not in ("backend", "hosted")}
    assert _comparable(saved, "h") == _comparable(SFTConfig(), "h")
    assert _comparable(saved, "h") == _comparable(SFTConfig(hosted=HostedConfig(suffix="x")), "h")
    assert _comparable(saved, "h") != _comparable(SFTConfig(backend="openai"), "h")


def test_the_model_is_made_from_the_uploaded_file(tmp_path, provider):
    seen = {}

    def on_succeed(path: Path) -> str:
        seen["rows"] = [json.loads(line) for line in path.read_text().splitlines()]
        return "tiny-local-model"

    with FAKES[provider](tmp_path / "fake", api_key=KEY, on_succeed=on_succeed) as fake:
        run = tmp_path / "run"
        write_labels(run)
        result = run_sft(config(run, fake, provider))
    assert result["model_id"] == "tiny-local-model"
    assert seen["rows"] == training_rows(out_dir(run))


# ---------------------------------------------------------------- keys
def test_missing_key_names_the_variable(tmp_path, fake, provider, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("TOGETHER_API_KEY")
    run = tmp_path / "run"
    write_labels(run)
    with pytest.raises(HostedError, match={"openai": "OPENAI_API_KEY",
                                            "together": "TOGETHER_API_KEY"}[provider]):
        run_sft(config(run, fake, provider))
    monkeypatch.setenv("MY_KEY", KEY)
    assert run_sft(config(run, fake, provider, api_key_env="MY_KEY"))["model_id"]


def test_the_key_is_written_nowhere(tmp_path, fake, provider, capfd, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    write_labels(run)
    fake.fault("429", "POST", JOBS)
    fake.fault("drop", "GET", JOB)
    interrupt_on_poll(monkeypatch, n=3)
    with pytest.raises(HostedError):
        run_sft(config(run, fake, provider))
    monkeypatch.setattr(train, "_sleep", lambda s: None)
    run_sft(config(run, fake, provider))
    with pytest.raises(HostedError):
        run_sft(config(run, fake, provider, n_epochs=2))
    assert fake.auth_failures == 0  # the key was used
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files) and len(files) > 8
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p
    captured = capfd.readouterr()
    assert KEY not in captured.out and KEY not in captured.err
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert caplog.records  # the clients did log


def test_cli_flags_map_onto_the_stage(tmp_path, capsys):
    from rewardprompt.cli import main

    with OpenAIFake(tmp_path / "fake", api_key=KEY) as fake:
        run = tmp_path / "run"
        write_labels(run)
        code = main(["sft", "--backend", "openai", "--hosted.base-model", MODELS["openai"],
                     "--hosted.base-url", fake.url, "--hosted.poll-interval", "0.01",
                     "--hosted.poll-max-interval", "0.02", "--hosted.n-epochs", "2",
                     "--run", str(run)])
        assert code == 0, capsys.readouterr().err
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["model_id"] and fake.creations[0]["method"]["supervised"] == {
            "hyperparameters": {"n_epochs": 2}}
        assert main(["sft", "--backend", "openai", "--run", str(run)]) == 2
        assert "--hosted.base-model" in capsys.readouterr().err


def test_settings_a_provider_does_not_take_are_refused(tmp_path, fake, provider):
    run = tmp_path / "run"
    write_labels(run)
    other = {"openai": {"learning_rate": 1e-4}, "together": {"learning_rate_multiplier": 2.0}}
    with pytest.raises(HostedError, match="takes --hosted.learning-rate"):
        run_sft(config(run, fake, provider, **other[provider]))
    with pytest.raises(HostedError, match="must not carry credentials"):
        run_sft(config(run, fake, provider, base_url=fake.url.replace("//", "//user:pw@")))
    with pytest.raises(HostedError, match="--hosted.base-model"):
        run_sft(config(run, fake, provider, base_model=""))
    assert fake.requests == []


def test_an_unknown_together_model_stops_before_the_upload(tmp_path):
    with TogetherFake(tmp_path / "fake", api_key=KEY) as fake:
        run = tmp_path / "run"
        write_labels(run)
        with pytest.raises(HostedError, match="model limits of meta-llama/Nope.*404"):
            run_sft(config(run, fake, "together", base_model="meta-llama/Nope"))
        assert fake.uploads == [] and fake.creations == []


def test_a_tokenizer_counts_instead_of_the_estimate(tmp_path):
    from conftest import build_tiny_tokenizer

    tok_dir = tmp_path / "tok"
    tok = build_tiny_tokenizer(tok_dir)
    with OpenAIFake(tmp_path / "fake", api_key=KEY) as fake:
        run = tmp_path / "run"
        write_labels(run)
        result = run_sft(config(run, fake, "openai", tokenizer=str(tok_dir)))
    assert result["token_count"] == f"tokenizer {tok_dir}"
    rows = training_rows(out_dir(run))
    plain = [{"role": m["role"], "content": m["content"]} for m in rows[0]["messages"]]
    n = len(tok(tok.apply_chat_template(plain, tokenize=False), add_special_tokens=False)["input_ids"])
    assert result["longest_example_tokens"] >= n > 0
