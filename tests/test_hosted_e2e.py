"""The whole hosted path offline, in one test: ``sft --backend openai`` against the fake OpenAI
server, whose job really fine-tunes a tiny local policy on the uploaded training file; then
``generate --backend openai-chat`` against ``rewardprompt serve`` serving that policy under the
job's model id; then ``evaluate`` and the report with its cost table."""
from __future__ import annotations

import json
from pathlib import Path

from fake_hosted import OpenAIFake
from rewardprompt.cli import main
from rewardprompt.runs import read_jsonl, write_jsonl

KEY = "sk-rp-E2E-5c1d9a7e3f2b4c6d-DISTINCTIVE"
SCORER = "synthetic:length:20"


def _labels(run: Path, n: int = 12) -> None:
    rows = [{"prompt": [{"role": "user", "content": f"How do I bake bread number {i}?"}],
             "response": "Mix flour, water and yeast." + " Then bake it." * (i % 4),
             "rewards": {"length": (i % 4) / 3}} for i in range(n)]
    write_jsonl(run / "label" / "train.jsonl", rows)


def test_hosted_sft_then_hosted_sampling_then_evaluate(tmp_path, tiny_policy, monkeypatch):
    from rewardprompt.serve import ServeConfig, start_server

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run = tmp_path / "run"
    _labels(run)
    trained: list[Path] = []

    def fine_tune(uploaded: Path) -> str:
        """The fake provider's training: local SFT on exactly the chat rows it was sent (the
        block is already text in each prompt, so the local run adds none)."""
        rows = [json.loads(line) for line in uploaded.read_text().splitlines() if line.strip()]
        data = tmp_path / "provider" / "rows.jsonl"
        write_jsonl(data, [{"prompt": [{k: v for k, v in m.items() if k != "weight"}
                                       for m in r["messages"][:-1]],
                            # Local SFT's row format wants rewards; unconditioned, it reads none.
                            "response": r["messages"][-1]["content"], "rewards": {"unused": 0.0}}
                           for r in rows])
        out = tmp_path / "provider" / "model"
        assert main(["sft", "--data", str(data), "--out", str(out), "--model", str(tiny_policy),
                     "--no-conditioned", "--max-steps", "2", "--batch-size", "4",
                     "--no-lora"]) == 0
        trained.append(out / "final")
        return "ft:gpt-4o-mini-2024-07-18:rewardprompt::e2e"

    with OpenAIFake(tmp_path / "fake", api_key=KEY, on_succeed=fine_tune) as fake:
        assert main(["sft", "--run", str(run), "--backend", "openai",
                     "--hosted.base-model", "gpt-4o-mini-2024-07-18",
                     "--hosted.base-url", fake.url, "--hosted.poll-interval", "0.01",
                     "--template", "position", "bottom"]) == 0
        assert len(fake.uploads) == 1 and len(fake.creations) == 1
    final = run / "sft" / "conditioned" / "final"
    meta = json.loads((final / "rewardprompt.json").read_text())
    assert meta["hosted"]["model_id"] == "ft:gpt-4o-mini-2024-07-18:rewardprompt::e2e"
    assert meta["conditioned"] and meta["template"]["position"] == "bottom"

    write_jsonl(tmp_path / "prompts.jsonl",
                [{"id": i, "prompt": [{"role": "user", "content": f"What is bread {i}?"}]}
                 for i in range(4)])
    server, url = start_server(ServeConfig(model=str(trained[0]), port=0,
                                           name=meta["hosted"]["model_id"]))
    try:
        assert main(["generate", "--run", str(run), "--prompts", str(tmp_path / "prompts.jsonl"),
                     "--model", str(final), "--backend", "openai-chat", "--api.base-url", url,
                     "--api.api-key-env", "", "--api.top-logprobs", "3",
                     "--tokenizer", str(tiny_policy), "--samples-per-prompt", "3",
                     "--sampling.max-new-tokens", "6"]) == 0
    finally:
        server.shutdown()
    rows = read_jsonl(run / "generate" / "conditioned.jsonl")
    assert len(rows) == 12 and all(r["logprobs"] for r in rows)
    # The served model saw the block where training put it: the bottom of the last user turn.
    assert all("<REWARD>" in r["shown"][-1]["content"] for r in rows)

    assert main(["evaluate", "--run", str(run), "--scorers", "length", SCORER]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "length" in metrics["control"]["dimensions"]
    # Cost per stage, priced into the manifest: the training job's tokens at OpenAI's prices for
    # its base model, the sampling's tokens at the self-hosted server's (none).
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    [train_cost] = stages["sft_conditioned"]["cost"]
    assert train_cost["provider"] == "openai" and train_cost["trained_tokens"] > 0
    assert train_cost["priced_as"] == "gpt-4o-mini-2024-07-18" and train_cost["usd"] > 0
    [sample_cost] = stages["generate_conditioned"]["cost"]
    assert sample_cost["provider"] == "openai-chat" and sample_cost["completion_tokens"] > 0
    assert sample_cost["usd"] == 0
    assert main(["report", str(run)]) == 0
    report = (run / "report.html").read_text()
    cost = report.split("<h2>Cost</h2>")[1].split("<h2>")[0]
    assert "gpt-4o-mini-2024-07-18" in cost and f"${train_cost['usd']:.4f}" in cost
    for path in run.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="ignore"), path
