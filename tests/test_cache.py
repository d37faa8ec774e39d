"""The stage cache: keyed by what decides a stage (never where the run lives), restored into
another run with its outputs, result and metrics, written atomically, and used by the recipe so
that a run changing only policy settings trains no reward model again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardprompt.runs import Run, read_json, update_metrics_entry
from rewardprompt.stage_cache import StageCache, cache_root, relocate, tree_hash


@pytest.fixture
def cache(tmp_path, monkeypatch) -> StageCache:
    monkeypatch.setenv("REWARDPROMPT_CACHE", str(tmp_path / "cache"))
    c = StageCache.from_env()
    assert c is not None and c.root == tmp_path / "cache" / "stages"
    return c


def _toy_config(run: Path, **kw) -> dict:
    return {"data": str(run / "data" / "in.txt"), "out": str(run / "out"), "run": str(run),
            "lr": 0.1, **kw}


def _toy_run(run_dir: Path, cache: StageCache | None, calls: list, **kw) -> tuple[Run, dict]:
    """A stage that reads an input in the run, writes a file and a folder, an entry of a shared
    metrics section, and returns a result naming its own path."""
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    (run_dir / "data" / "in.txt").write_text("same input")
    cfg = _toy_config(run_dir, **kw)
    run = Run(run_dir, cache=cache)

    def fn() -> dict:
        calls.append(run_dir)
        out = Path(cfg["out"])
        (out / "model").mkdir(parents=True, exist_ok=True)
        (out / "model" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
        (out / "scores.jsonl").write_text('{"s": 1}\n')
        update_metrics_entry(str(run_dir), "rm", "helpful", {"accuracy": 0.7, "out": cfg["out"]})
        return {"accuracy": 0.7, "out": cfg["out"]}

    result = run.stage("rm_helpful", fn, config=cfg, inputs=[cfg["data"]],
                       outputs=[Path(cfg["out"]) / "model", Path(cfg["out"]) / "scores.jsonl"],
                       cache=True)
    return run, result


def test_key_depends_on_what_decides_the_stage_not_on_where_the_run_lives(cache, tmp_path,
                                                                           monkeypatch):
    a, b = tmp_path / "runs" / "a", tmp_path / "elsewhere" / "b"
    for d in (a, b):
        (d / "data").mkdir(parents=True)
        (d / "data" / "in.txt").write_text("same input")
    model = tmp_path / "base_model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    key = lambda run, **kw: cache.key("rm_helpful", _toy_config(run, base=str(model), **kw),  # noqa: E731
                                      [run / "data" / "in.txt"], run)
    assert key(a) == key(b)  # the run's own out, data and run paths are not part of it
    # the same run named relatively and absolutely
    monkeypatch.chdir(tmp_path)
    rel = cache.key("s", _toy_config(Path("runs/a")), [Path("runs/a/data/in.txt")], Path("runs/a"))
    assert rel == cache.key("s", _toy_config(a), [a / "data" / "in.txt"], a)
    before = key(a)
    assert key(a, lr=0.2) != before  # a knob
    assert cache.key("rm_harmless", _toy_config(a, base=str(model)), [a / "data" / "in.txt"],
                     a) != before  # another stage
    (b / "data" / "in.txt").write_text("other input")
    assert key(b) != before  # an input's content
    (model / "config.json").write_text('{"hidden": 2}')
    assert key(a) != before  # a model folder outside the run, changed in place
    assert key(a, api_key="secret-1") == key(a, api_key="secret-2")  # secrets never enter it


def test_key_follows_the_code_of_a_function_scorer(cache, tmp_path, monkeypatch):
    mod = tmp_path / "my_scorers.py"
    mod.write_text("def score(prompts, responses):\n    return [0.5] * len(responses)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    key = lambda: cache.key("label", {"scorers": {"helpful": "my_scorers:score"}}, [], run)  # noqa: E731
    before = key()
    mod.write_text("def score(prompts, responses):\n    return [0.9] * len(responses)\n")
    assert key() != before


def test_tree_hash_follows_source_and_read_files_but_not_the_presets(tmp_path):
    """A preset is read into the run's config (which the key holds): editing one leaves the
    code hash, and so every cache entry, as it was; code or a file the code reads does not."""
    pkg = tmp_path / "pkg"
    (pkg / "configs" / "prices").mkdir(parents=True)
    (pkg / "stage.py").write_text("X = 1\n")
    (pkg / "configs" / "demo.yaml").write_text("seed: 0\n")
    (pkg / "configs" / "prices" / "prices.yaml").write_text("gpt: 1.0\n")
    before = tree_hash(pkg)
    (pkg / "configs" / "demo.yaml").write_text("seed: 1\n")
    (pkg / "configs" / "new.yaml").write_text("include: demo\n")
    assert tree_hash(pkg) == before
    (pkg / "configs" / "prices" / "prices.yaml").write_text("gpt: 2.0\n")
    after_prices = tree_hash(pkg)
    assert after_prices != before
    (pkg / "stage.py").write_text("X = 2\n")
    assert tree_hash(pkg) != after_prices


def test_relocate_moves_only_whole_path_prefixes():
    obj = {"out": "runs/a/rm/x", "same": "runs/a", "other": "runs/ab/rm", "n": 3,
           "list": ["runs/a/data", "text runs/a/inside"]}
    assert relocate(obj, ["runs/a"], "<RUN>") == {
        "out": "<RUN>/rm/x", "same": "<RUN>", "other": "runs/ab/rm", "n": 3,
        "list": ["<RUN>/data", "text runs/a/inside"]}


def test_a_stage_is_restored_into_another_run(cache, tmp_path):
    calls: list = []
    a, b = tmp_path / "a", tmp_path / "b"
    _, first = _toy_run(a, cache, calls)
    assert calls == [a]
    run_b, second = _toy_run(b, cache, calls)
    assert calls == [a]  # not run again
    assert second == {"accuracy": 0.7, "out": str(b / "out")}  # the result, with b's own path
    assert (b / "out" / "model" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert (b / "out" / "scores.jsonl").read_text() == '{"s": 1}\n'
    metrics = read_json(b / "metrics.json")
    assert metrics["rm"]["helpful"] == {"accuracy": 0.7, "out": str(b / "out")}
    entry = read_json(b / "manifest.json")["stages"]["rm_helpful"]
    assert entry["done"] and entry["wall_s"] == 0.0
    assert entry["cached_from"]["source"] == str(a.resolve())
    assert entry["cached_from"]["key"].startswith("sha256:") and entry["cached_from"]["saved_s"] >= 0
    assert read_json(b / entry["result_file"]) == second
    # a resume of b finds the stage done, with the outputs it recorded
    assert Run(b, cache=cache).stage("rm_helpful", lambda: 1 / 0, config=_toy_config(b),
                                     inputs=[b / "data" / "in.txt"],
                                     outputs=[b / "out" / "model", b / "out" / "scores.jsonl"],
                                     cache=True) == second
    # another config is another entry
    _toy_run(tmp_path / "c", cache, calls, lr=0.5)
    assert calls == [a, tmp_path / "c"]


def test_a_damaged_entry_is_dropped_and_the_stage_runs(cache, tmp_path):
    calls: list = []
    _toy_run(tmp_path / "a", cache, calls)
    (entry,) = [d for d in cache.root.iterdir() if not d.name.startswith(".")]
    weights = entry / "files" / "out" / "model" / "weights.bin"
    weights.unlink()  # a hard link: replace it rather than write through to run a's file
    weights.write_bytes(b"corrupt")
    _toy_run(tmp_path / "b", cache, calls)
    assert calls == [tmp_path / "a", tmp_path / "b"]
    assert (tmp_path / "b" / "out" / "model" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert "cached_from" not in read_json(tmp_path / "b" / "manifest.json")["stages"]["rm_helpful"]


def test_a_store_cut_short_leaves_no_entry(cache, tmp_path, monkeypatch):
    import rewardprompt.stage_cache as sc

    calls: list = []

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a kill between copying and renaming looks like

    monkeypatch.setattr(sc.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "a", cache, calls)
    assert not list(cache.root.iterdir())  # neither an entry nor its temporary folder
    monkeypatch.undo()
    monkeypatch.setenv("REWARDPROMPT_CACHE", str(tmp_path / "cache"))
    # a temporary folder left by a process that died is cleared by the next store
    stale = cache.root / ".tmp-999999999-abc"
    (stale / "files").mkdir(parents=True)
    _toy_run(tmp_path / "b", cache, calls)
    assert not stale.exists()
    assert len([d for d in cache.root.iterdir() if (d / "entry.json").is_file()]) == 1


def test_cache_off(monkeypatch, tmp_path):
    from rewardprompt.models import cache_dir

    monkeypatch.setenv("REWARDPROMPT_CACHE", "off")
    assert cache_root() is None and StageCache.from_env() is None
    assert cache_dir() == Path.home() / ".cache" / "rewardprompt"  # models still have a home
    monkeypatch.delenv("REWARDPROMPT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "rewardprompt" / "stages"
    calls: list = []
    _toy_run(tmp_path / "a", None, calls)
    _toy_run(tmp_path / "b", None, calls)
    assert len(calls) == 2


def test_second_recipe_with_other_policy_settings_trains_no_reward_model(tmp_path, tiny_policy,
                                                                         monkeypatch, capsys):
    """The tiny demo of test_pipeline, cut to its smallest: a second run in another folder with
    only --sft.max-steps changed restores the data, reward models, steered samples and labels,
    and trains its policies."""
    from test_pipeline import demo_args

    from rewardprompt.cli import parse
    from rewardprompt.recipe import run_recipe

    monkeypatch.setenv("REWARDPROMPT_CACHE", str(tmp_path / "cache"))
    small = ["--baselines", "uncond_sft", "prompted", "--openers", "", "Sure! Here's", "--label-pairs", "6",
             "--eval-prompts", "2", "--samples-per-prompt", "1", "--evaluate.n-boot", "20"]

    def run(out: Path, *extra: str) -> dict:
        cfg = parse("demo", demo_args(out, tiny_policy)[4:] + small + list(extra))
        run_recipe(cfg)
        return read_json(out / "manifest.json")

    first = run(tmp_path / "one")
    assert not any("cached_from" in s for s in first["stages"].values())
    second = run(tmp_path / "two", "--sft.max-steps", "4")
    stages = second["stages"]
    restored = {"data", "rm_helpful", "rm_helpful_test", "rm_harmless", "rm_harmless_test",
                "sample_steered", "label", "generate_prompted_s0"}
    for name in restored:
        assert stages[name]["cached_from"]["source"] == str((tmp_path / "one").resolve()), name
        assert stages[name]["wall_s"] == 0.0
    for name in ("sft_conditioned_s0", "sft_uncond_sft_s0", "generate_conditioned_s0", "evaluate"):
        assert "cached_from" not in stages[name], name
    assert "stage 'rm_helpful' restored from the stage cache" in capsys.readouterr().out
    # the reward models' figures reached the second run's metrics, with its own paths
    m1, m2 = (read_json(tmp_path / d / "metrics.json") for d in ("one", "two"))
    for dim in ("helpful", "harmless", "helpful-test", "harmless-test"):
        assert json.dumps(m2["rm"][dim]) == json.dumps(m1["rm"][dim]).replace(
            str(tmp_path / "one"), str(tmp_path / "two"))
    assert m2["labels"] == m1["labels"]
    assert (tmp_path / "two" / "rm" / "helpful" / "rm_config.json").is_file()
    assert stages["sft_conditioned_s0"]["config"]["max_steps"] == 4
