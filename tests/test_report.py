"""The HTML report: one self-contained file built only from a run's files."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from rewardprompt.evaluation.metrics import controllability
from rewardprompt.stats import accuracy_ci
from rewardprompt.report.html import build_report
from rewardprompt.runs import atomic_write_json, write_jsonl

DIMS = ["helpful", "harmless"]
EVIL = "<script>alert('x')</script> & \"quotes\""


def _fake_run(run: Path, n_prompts: int = 30, per_prompt: int = 4) -> dict:
    """A run directory with synthetic scores, metrics computed by controllability()."""
    rng = np.random.default_rng(0)
    scores, metrics = [], {"dimensions": DIMS, "baselines": {"uncond_sft": {}}}
    for model, gain in [("conditioned", 0.8), ("uncond_sft", 0.0)]:
        n = n_prompts * per_prompt
        groups = np.repeat(np.arange(n_prompts), per_prompt)
        t = {d: rng.uniform(size=n) for d in DIMS}
        a = {d: np.clip(0.1 + gain * t[d] + rng.normal(0, 0.1, n), 0, 1) for d in DIMS}
        lengths = rng.integers(10, 200, n)
        for i in range(n):
            scores.append({"id": f"{model}-{i}", "model": model,
                           "targets": {d: round(float(t[d][i]), 3) for d in DIMS},
                           "actual": {d: round(float(a[d][i]), 3) for d in DIMS},
                           "n_tokens": int(lengths[i]),
                           "response": EVIL if i == 0 else f"response {i}",
                           "prompt": [{"role": "user", "content": f"question {groups[i]} <b>"}]})
        # The <script> row must be among the examples shown: give it the lowest target.
        if model == "conditioned":
            scores[0]["targets"] = {d: 0.0 for d in DIMS}
            t = {d: np.r_[0.0, t[d][1:]] for d in DIMS}
        for d in DIMS:
            m = controllability(t[d], a[d], lengths, groups=groups, n_boot=200)
            if model == "conditioned":  # the held-out test RM agrees less with the targets
                m["test_rm"] = controllability(t[d], np.clip(0.8 * a[d] - 0.05, 0, 1), lengths,
                                               groups=groups, n_boot=200)
            (metrics if model == "conditioned" else metrics["baselines"]["uncond_sft"])[d] = m
    shares = [{"lo": k / 5, "hi": (k + 1) / 5, "n": 7,
               "share": {"I'm sorry": 0.125 * k, "other": 1 - 0.125 * k}} for k in range(5)]
    for d in DIMS:
        metrics[d]["openers"] = shares
    metrics["rm"] = {d: {**accuracy_ci(rng.uniform(size=200) < 0.7, n_boot=200),
                         "n_test": 200, "train_seconds": 12.5} for d in DIMS}
    labels = {d: rng.beta(2, 2, 300) for d in DIMS}
    metrics["labels"] = {d: {"mean": float(v.mean()), "std": float(v.std()),
                             "quantiles": [float(q) for q in np.quantile(v, [0, .5, 1])],
                             "frac_below_0.1": float(np.mean(v < 0.1)),
                             "frac_above_0.9": float(np.mean(v > 0.9))} for d, v in labels.items()}
    metrics["goal"] = {"helpful r > 0.5": "pass"}
    atomic_write_json(run / "metrics.json", metrics)
    atomic_write_json(run / "manifest.json", {
        "config": {"model": "tiny", "note": "</pre><script>bad()</script>"},
        "versions": {"python": "3.12"}, "git_commit": "abc123", "seeds": {"global": 0},
        "data": {"train": {"path": "x.jsonl", "hash": "sha256:00"}},
        "stages": {"label": {"done": True, "wall_s": 3.25}, "sft": {"done": True, "wall_s": 40.0}},
        "peak_rss_mib": 512.0, "created": "2025-01-01T00:00:00"})
    write_jsonl(run / "eval" / "scores.jsonl", scores)
    write_jsonl(run / "label" / "train.jsonl",
                [{"id": str(i), "prompt": [], "response": "r", "source": "chosen",
                  "rewards": {d: float(labels[d][i]) for d in DIMS}} for i in range(300)])
    return metrics


def test_report_renders_in_a_real_browser(tmp_path: Path) -> None:
    """Chromium loads the page with no console error and every figure decoded."""
    from browser import assert_renders

    _fake_run(tmp_path)
    seen = assert_renders(build_report(tmp_path), min_images=len(DIMS) + 1)
    assert seen["images"] == len(DIMS) + 1


def test_the_browser_check_sees_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    from browser import render

    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><img src='data:image/png;base64,AAAA'>"
                    "<script>console.error('boom')</script></body></html>")
    seen = render(page)
    assert seen == {"images": 1, "loaded": 0, "errors": ["boom"]}


def test_report_is_self_contained_and_shows_metrics(tmp_path: Path) -> None:
    metrics = _fake_run(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    out = build_report(tmp_path)
    assert out == tmp_path / "report.html"
    # the page, and the target-vs-actual figures as files beside it; no temp leftovers
    figures = {tmp_path / "figures" / f"target_vs_actual_{d}.png" for d in ("helpful", "harmless")}
    assert {p for p in tmp_path.rglob("*")} - before == {out, tmp_path / "figures"} | figures
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in figures)
    html = out.read_text(encoding="utf-8")
    assert html.count('<img alt="figure" src="data:image/png;base64,') == len(DIMS) + 1
    assert not re.search(r"https?://", html)
    for d in DIMS:
        for m in (metrics[d], metrics["baselines"]["uncond_sft"][d]):
            assert f"{m['pearson_r']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" in html
            assert f"{m['slope']:.3f}" in html and f"{m['within_prompt_r']:.3f}" in html
        assert f"{metrics['rm'][d]['accuracy']:.3f}" in html
        test_rm = metrics[d]["test_rm"]
        assert (f"{test_rm['pearson_r']:.3f} [{test_rm['ci_low']:.3f}, {test_rm['ci_high']:.3f}]"
                in html and f"{test_rm['mean_actual']:.3f}" in html)
        assert f"{metrics['labels'][d]['frac_below_0.1']:.3f}" in html
    assert "abc123" in html and "40.0" in html and "512.0" in html
    assert "I&#x27;m sorry" in html and "0.50" in html  # the openers-by-target table
    # Data text is escaped: no markup from responses, prompts or the config reaches the page.
    assert "<script" not in html and "question 0 <b>" not in html
    assert "question 0 &lt;b&gt;" in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in html
    assert "&lt;/pre&gt;&lt;script&gt;bad()" in html


def test_missing_optional_files_say_not_available(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    for name in ("manifest.json", "eval/scores.jsonl", "label/train.jsonl"):
        (tmp_path / name).unlink()
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert html.count("not available") >= 4
    assert "scores.jsonl is missing" in html and "train.jsonl is missing" in html
    assert "data:image/png;base64," in html  # bin means still plotted from metrics.json
    assert "Openers by target" in html


def test_minimal_metrics_and_corrupt_optional_file(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"dimensions": ["helpful"]}', encoding="utf-8")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "scores.jsonl").write_text("{not json\n", encoding="utf-8")
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert "could not be read" in html and "Reward-model accuracy" in html


def test_missing_metrics_raises_with_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "metrics.json"))):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_goal_is_stated_in_words_with_what_was_asked_measured_and_met(tmp_path: Path) -> None:
    metrics = _fake_run(tmp_path)
    vs = {"uncond_sft": {"r": 0.01, "ci_low": -0.1, "ci_high": 0.12, "diff": 0.5,
                         "diff_ci_low": 0.38, "diff_ci_high": 0.61},
          "prompted": {"r": 0.05, "ci_low": -0.05, "ci_high": 0.15, "diff": 0.46,
                       "diff_ci_low": 0.3, "diff_ci_high": 0.6}}
    asked = {"judge": "test_rm", "split": "test", "seeds": [0, 1, 2], "above": ["uncond_sft", "prompted"]}
    metrics["goal"] = {
        "harmless": {"asked": {**asked, "r_at_least": 0.5}, "measured": {"r": 0.51, "ci_low": 0.42,
                                                                         "ci_high": 0.6},
                     "r_met": True, "above_met": True, "met": True, "vs": vs},
        "helpful": {"asked": {**asked, "r_at_least": 0.3}, "measured": {"r": 0.1, "ci_low": -0.02,
                                                                        "ci_high": 0.2},
                    "r_met": False, "above_met": False, "met": False, "vs": vs}}
    metrics["control"] = {"judge": "test_rm", "seeds": [0, 1, 2], "n_prompts": 40,
                          "dimensions": {"harmless": {"conditioned": {"r": 0.51, "ci_low": 0.42,
                                                                      "ci_high": 0.6}}},
                          "cost": {"conditioned": {"samples_per_response": 1.0,
                                                   "rm_calls_per_response": 0.0}}}
    atomic_write_json(tmp_path / "metrics.json", metrics)
    html = build_report(tmp_path).read_text()
    words = re.sub(r"<[^>]+>", "", html.split("<h2>Goal</h2>")[1].split("<h2>")[0])
    assert "Asked: r &ge; 0.50" in words and "held-out test RM" in words
    assert "mean over 3 seeds (0, 1, 2)" in words and "on the test split" in words
    assert "r = 0.510 [0.420, 0.600]" in words and "difference 0.500 [0.380, 0.610]" in words
    assert words.count("Result: met.") == 1
    assert "Result: not met: r is below the bar; its CI is not above every required baseline's" in words
    assert "0.510 [0.420, 0.600]" in html.split("<h2>Control against the baselines</h2>")[1]
