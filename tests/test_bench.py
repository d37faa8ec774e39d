"""bench sft, bench sample and bench rm write their sections into one bench file, with the
machine; on tiny models only the structure is checked (speed targets live in the bench file,
never in timed tests)."""
from __future__ import annotations

import json
import math

import pytest

from rewardprompt.bench import (BenchRMConfig, BenchSFTConfig, BenchSampleConfig, bench_rm,
                                bench_sample, bench_sft)
from rewardprompt.bench.machine import PeakMemory, machine_info


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench_file(tmp_path_factory, tiny_policy, tiny_encoder):
    """One bench file that all three benchmarks wrote into, in turn."""
    from rewardprompt.cli import main

    path = tmp_path_factory.mktemp("bench") / "bench.json"
    bench_sft(BenchSFTConfig(out=str(path), model=str(tiny_policy), examples=8, batch_size=4,
                             max_steps=1, repeats=2, max_prompt_tokens=64,
                             max_completion_tokens=16, variants=["full_logits"]))
    assert main(["bench", "sample", "--out", str(path), "--model", str(tiny_policy),
                 "--prompts", "4", "--batch-size", "2", "--max-new-tokens", "4",
                 "--repeats", "1"]) == 0
    bench_rm(BenchRMConfig(out=str(path), family="encoder",
                           base_model=str(tiny_encoder), data="hh-harmless", pairs=8,
                           batch_size=4, max_length=64, repeats=1))
    return json.loads(path.read_text())


def test_sections_share_one_file_with_the_machine(bench_file):
    assert {"sft", "sample", "rm", "machine"} <= set(bench_file)
    for section in (bench_file["sft"], bench_file["sample"], bench_file["rm"]["encoder"]):
        m = section["machine"]
        assert m["cpu"] and m["cpu_cores"] >= 1 and isinstance(m["cpu_bf16_native"], bool)
        assert m["torch"] and "gpu" in m and section["versions"]["torch"]
        assert section["measured"]


def test_sft_section(bench_file):
    sft = bench_file["sft"]
    assert _positive(sft["ratio_vs_trl"]) and _positive(sft["ratio_with_setup_vs_trl"])
    assert set(sft["median_tokens_per_second"]) == {"rewardprompt", "rewardprompt:full_logits",
                                                    "trl"}
    assert _positive(sft["variants_vs_trl"]["full_logits"])
    for side, runs in sft["runs"].items():
        assert len(runs) == 2, side  # one per repeat; the figure is their median
        for run in runs:
            assert run["tokens"] > run["completion_tokens"] > 0 and run["micro_steps"] == 1
            assert run["peak_memory_mib"] >= 0 and run["memory"]
    # the same completion-only loss on (nearly) the same tokens: TRL appends an end-of-sequence
    # token to replies cut at max_completion_tokens, so its count may be a few tokens higher
    ours, trl = sft["runs"]["rewardprompt"][0], sft["runs"]["trl"][0]
    assert 0 <= trl["completion_tokens"] - ours["completion_tokens"] <= 4
    assert sft["median_train_loss"]["rewardprompt"] == pytest.approx(
        sft["median_train_loss"]["rewardprompt:full_logits"], rel=1e-5)
    assert sft["median_train_loss"]["trl"] == pytest.approx(sft["median_train_loss"]["rewardprompt"],
                                                            rel=0.05)


def test_sample_section(bench_file):
    sample = bench_file["sample"]
    assert _positive(sample["ratio_vs_generate_b1"]) and _positive(sample["ratio_vs_generate_batched"])
    for side in ("rewardprompt", "generate_b1", "generate_batched"):
        (run,) = sample["runs"][side]
        assert 4 <= run["tokens"] <= 4 * 4 and run["seconds"] > 0  # 4 prompts, at most 4 each
        assert sample["peak_memory_mib"][side] >= 0


def test_rm_section(bench_file, tmp_path):
    rm = bench_file["rm"]["encoder"]
    assert _positive(rm["ratio"]) and set(rm["peak_memory_mib"]) == {"rewardprompt", "trl"}


def test_peak_memory_sees_an_allocation():
    import numpy as np

    with PeakMemory("cpu") as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    assert mem.mib >= 48
    assert machine_info()["cpu_cores_usable"] >= 1


def test_bad_settings_are_refused(tiny_policy, tmp_path):
    with pytest.raises(ValueError, match="unknown variants"):
        bench_sft(BenchSFTConfig(out=str(tmp_path / "b.json"), model=str(tiny_policy),
                                 variants=["fastest"]))
    with pytest.raises(ValueError, match="fewer than prompts"):
        bench_sample(BenchSampleConfig(out=str(tmp_path / "b.json"), model=str(tiny_policy),
                                       data=str(_one_pair(tmp_path)), prompts=3, repeats=1))


def _one_pair(tmp_path):
    from rewardprompt.runs import write_jsonl

    path = tmp_path / "one.jsonl"
    write_jsonl(path, [{"id": 0, "prompt": [{"role": "user", "content": "hi"}],
                        "chosen": "hello", "rejected": "go away"}])
    return path
