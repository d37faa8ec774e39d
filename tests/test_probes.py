"""Reward probes on tiny random models: positions, planted signals, resume, sweep, stages."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rewardprompt.errors import DataError
from rewardprompt.probes.collect import CollectConfig, collect_activations
from rewardprompt.probes.probe import Hyper, Side, evaluate, fit_probe, shuffled
from rewardprompt.probes.store import ActivationStore


def write_pairs(path: Path, n: int = 60) -> Path:
    """Structured pairs with UltraFeedback-style ratings; replies of different lengths, so some
    response positions exist in one reply and not in the other."""
    rows = []
    for i in range(n):
        rows.append({"id": f"p{i}",
                     "prompt": [{"role": "user", "content": f"How do I bake bread, case {i}?"}],
                     "chosen": "Sure! Here is a list: first, second, third. " * (1 + i % 3),
                     "rejected": "No." if i % 2 else "I'm sorry, I can't help with that request.",
                     "metadata": {"score_chosen": 7 + i % 3, "score_rejected": 2 + i % 2}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def collect_cfg(policy: Path, pairs: Path, out: Path, **kw) -> CollectConfig:
    base = dict(pairs=[str(pairs)], model=str(policy), out=str(out), shard_size=16,
                max_prompt_tokens=128, max_completion_tokens=16, batch_size=8)
    return CollectConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


@pytest.fixture(scope="module")
def store(tiny_policy, pairs_file, tmp_path_factory) -> ActivationStore:
    out = tmp_path_factory.mktemp("acts") / "acts"
    collect_activations(collect_cfg(tiny_policy, pairs_file, out, scorer="synthetic:length"))
    return ActivationStore(out)


# ---------------------------------------------------------------- positions
def test_activations_sit_where_the_tokens_are(store, tiny_policy):
    """Each position reads the token it names; prompt_end reads no reply token at all."""
    import torch

    from rewardprompt.models import load_policy, load_tokenizer
    from rewardprompt.policy.tokenise import IGNORE, render_prompt, tokenise_example
    from rewardprompt.template import RewardTemplate

    assert store.layers == ["resid_pre.0", "resid_pre.1", "final"]
    assert store.positions == ["prompt_end", "resp_1", "resp_2", "resp_4", "resp_8", "resp_16",
                               "last", "mean"]
    n = len(store.rows)
    assert n == 120 and {r["split"] for r in store.rows} == {"train", "dev", "test"}
    x, present = store.layer("final")
    assert x.shape == (n, 8, 32) and x.dtype == np.float32 and present.shape == (n, 8)
    tokens = store.tokens()
    tok = load_tokenizer(str(tiny_policy))
    model = load_policy(str(tiny_policy)).eval()
    pairs = {(r["pair_id"], r["chosen"]): i for i, r in enumerate(store.rows)}
    for i in (0, 1, 2, 3):  # chosen and rejected of two pairs, replies of different lengths
        r = store.rows[i]
        prompt = [{"role": "user", "content": f"How do I bake bread, case {r['id'][1:]}?"}]
        reply = ("Sure! Here is a list: first, second, third. " * (1 + int(r["id"][1:]) % 3)).strip() \
            if r["chosen"] else ("No." if int(r["id"][1:]) % 2 else
                                 "I'm sorry, I can't help with that request.")
        ex = tokenise_example(tok, prompt, reply, template=RewardTemplate(), targets=None,
                              max_prompt_tokens=128, max_completion_tokens=16)
        ids, labels = ex["input_ids"], ex["labels"]
        n_prompt = labels.count(IGNORE)
        assert r["n_prompt_tokens"] == n_prompt and r["n_completion_tokens"] == len(ids) - n_prompt
        # prompt_end is the prompt's own last token: a prompt token, the render_prompt text's.
        assert ids[:n_prompt] == tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        assert tokens[i, 0] == ids[n_prompt - 1] and labels[n_prompt - 1] == IGNORE
        assert labels[n_prompt] != IGNORE  # the next token is the reply's first
        for k, name in enumerate(store.positions[1:6], start=1):
            K = int(name.split("_")[1])
            if n_prompt + K - 1 < len(ids):
                assert present[i, k] and tokens[i, k] == ids[n_prompt + K - 1]
            else:
                assert not present[i, k] and tokens[i, k] == -1
        assert tokens[i, 6] == ids[-1] and present[i, 7] and tokens[i, 7] == -1
        with torch.no_grad():
            full = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            alone = model.model(input_ids=torch.tensor([ids[:n_prompt]]),
                                output_hidden_states=True).hidden_states
        for layer, name in enumerate(store.layers):
            got, _ = store.features(name, "prompt_end")
            # The prompt alone gives the same state: nothing of the reply reaches prompt_end.
            np.testing.assert_allclose(got[i], alone[layer][0, -1].numpy(), rtol=2e-3, atol=2e-3)
            last, _ = store.features(name, "last")
            np.testing.assert_allclose(last[i], full[layer][0, -1].numpy(), rtol=2e-3, atol=2e-3)
            mean, _ = store.features(name, "mean")
            np.testing.assert_allclose(mean[i], full[layer][0, n_prompt:].mean(0).numpy(),
                                       rtol=2e-3, atol=2e-3)
    # Chosen and rejected share their prompt: identical at prompt_end, different at last.
    pid = store.rows[0]["pair_id"]
    c, rj = pairs[pid, True], pairs[pid, False]
    for name in store.layers:
        pe, _ = store.features(name, "prompt_end")
        assert np.array_equal(pe[c], pe[rj])
    assert not np.allclose(x[c, 6], x[rj, 6])
    labels = store.rows[c]["labels"]
    assert labels["chosen"] == 1.0 and labels["rating"] >= 7 and 0 <= labels["rm"] <= 1


def test_layers_and_positions_can_be_chosen(tiny_policy, pairs_file, tmp_path):
    out = tmp_path / "acts"
    collect_activations(collect_cfg(tiny_policy, pairs_file, out, layers=[1, -1],
                                    positions=["prompt_end", "last"], dtype="float32"))
    s = ActivationStore(out)
    assert s.layers == ["resid_pre.1", "final"] and s.positions == ["prompt_end", "last"]
    with pytest.raises(ValueError, match="was not collected"):
        s.features("resid_pre.0", "last")
    with pytest.raises(ValueError, match="unknown position"):
        collect_activations(collect_cfg(tiny_policy, pairs_file, tmp_path / "b", positions=["end"]))
    with pytest.raises(ValueError, match="out of range"):
        collect_activations(collect_cfg(tiny_policy, pairs_file, tmp_path / "c", layers=[7]))


# ---------------------------------------------------------------- planted signals
def _planted(n: int, d: int, rng: np.random.Generator, w: np.ndarray) -> tuple[np.ndarray, Side]:
    """Features with a planted direction ``w`` (on an offset and uneven scales, which
    standardising must undo); label y = x.w exactly; rows paired, the higher y chosen."""
    scale = np.linspace(0.5, 3.0, d)
    x = (rng.normal(size=(n, d)) * scale + 5.0).astype(np.float32)
    y = (x - 5.0) / scale @ w
    pairs = np.arange(n).reshape(-1, 2)
    pairs = np.where((y[pairs[:, 0]] > y[pairs[:, 1]])[:, None], pairs, pairs[:, ::-1])
    return x, Side(idx=np.arange(n), y=y, pairs=pairs, groups=np.arange(n).astype(object))


def test_probes_recover_a_planted_direction_and_shuffled_labels_give_chance():
    rng = np.random.default_rng(0)
    d = 16
    w = rng.normal(size=d)
    (xt, tr), (xd, dv), (xs, te) = (_planted(n, d, rng, w) for n in (2000, 400, 400))
    # lr 1e-3: the seed's 1e-4 converges too, but in more steps than a test of seconds has.
    hp = Hyper(lr=1e-3, epochs=20, patience=3)
    probes = {}
    for objective in ("regression", "pairwise"):
        for method in ("linear", "ridge"):
            p = fit_probe(method, objective, xt, tr, xd, dv, hp, label="y", layer="l",
                          position="last")
            m = evaluate(p, xs, te, n_boot=200)
            # Noise-free labels: the direction is all there is to find. Pairs carry only signs,
            # so 1,000 of them pin it less tightly than 2,000 exact values.
            assert m["pairwise_accuracy"] > 0.9, (objective, method, m)
            if objective == "regression":
                assert m["r"] > 0.99 and m["r2"] > 0.97, (method, m)
                assert m["r_ci_low"] <= m["r"] <= m["r_ci_high"]
            probes[objective, method] = p
        # A probe fitted to shuffled labels has nothing to find. Its test r is then about the
        # cosine of a random direction with w, sd 1/sqrt(d) = 0.25; accuracy 0.5 +- 0.09
        # (200 pairs and that cosine): the bounds below are 3 sd.
        fake = fit_probe("ridge", objective, xt, shuffled(tr, objective, seed=1), xd, dv, hp,
                         label="y", layer="l", position="last")
        m = evaluate(fake, xs, te, n_boot=200)
        assert 0.23 < m["pairwise_accuracy"] < 0.77, (objective, m)
        if objective == "regression":
            assert abs(m["r"]) < 0.75 and m["r2"] < 0.2
    # Ridge's closed form and AdamW find the same direction.
    from rewardprompt.probes.train import agreement

    for objective in ("regression", "pairwise"):
        a = agreement(probes[objective, "linear"], probes[objective, "ridge"], xs)
        assert a["cosine"] > 0.95 and a["test_score_r"] > 0.95, (objective, a)


def test_planted_linear_label_of_real_activations(store):
    """Labels that are a linear function of the model's own activations are recovered."""
    x, present = store.features("resid_pre.1", "last")
    rng = np.random.default_rng(3)
    y = x @ rng.normal(size=x.shape[1])
    sides = {}
    for split in ("train", "dev", "test"):
        idx = np.array([i for i, r in enumerate(store.rows) if r["split"] == split and present[i]])
        sides[split] = Side(idx=idx, y=y[idx], pairs=np.zeros((0, 2), dtype=int),
                            groups=np.array([store.rows[i]["group"] for i in idx], dtype=object))
    p = fit_probe("ridge", "regression", x[sides["train"].idx], sides["train"],
                  x[sides["dev"].idx], sides["dev"], Hyper(), label="y", layer="resid_pre.1",
                  position="last")
    m = evaluate(p, x[sides["test"].idx], sides["test"], n_boot=200)
    assert m["r"] > 0.99 and m["r2"] > 0.97, m


# ---------------------------------------------------------------- resume
class Stop(Exception):
    pass


def test_collect_resumes_after_a_kill_and_refuses_another_config(tiny_policy, pairs_file, tmp_path):
    from safetensors.torch import load_file

    whole = tmp_path / "whole"
    ref = collect_activations(collect_cfg(tiny_policy, pairs_file, whole))
    assert ref["computed_shards"] == list(range(8))
    out = tmp_path / "resumed"

    def kill(i: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        collect_activations(collect_cfg(tiny_policy, pairs_file, out), on_shard=kill)
    first = out / "shard-00000.safetensors"
    assert first.is_file() and not (out / "shard-00001.safetensors").exists()
    with pytest.raises(DataError, match="unfinished"):
        ActivationStore(out)
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    seen: list[int] = []
    again = collect_activations(collect_cfg(tiny_policy, pairs_file, out), on_shard=seen.append)
    assert again["skipped_shards"] == [0] and again["computed_shards"] == seen == list(range(1, 8))
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == stamp  # not recomputed
    for i in range(8):
        a = load_file(str(whole / f"shard-{i:05d}.safetensors"))
        b = load_file(str(out / f"shard-{i:05d}.safetensors"))
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert ActivationStore(out).rows == ActivationStore(whole).rows
    # A finished collection reruns as a no-op; another config refuses, or starts over.
    assert collect_activations(collect_cfg(tiny_policy, pairs_file, out))["computed_shards"] == []
    with pytest.raises(ValueError, match="another config"):
        collect_activations(collect_cfg(tiny_policy, pairs_file, out, max_completion_tokens=8))
    redo = collect_activations(collect_cfg(tiny_policy, pairs_file, out, max_completion_tokens=8,
                                           overwrite=True))
    assert redo["computed_shards"] == list(range(8)) and "resp_16" not in redo["positions"]


# ---------------------------------------------------------------- sweep, train, report, CLI
def test_sweep_train_and_report(store, tmp_path):
    from rewardprompt.cli import main
    from rewardprompt.probes.probe import Probe
    from rewardprompt.report.html import build_report

    run = tmp_path / "run"
    assert main(["probe", "sweep", "--acts", str(store.dir), "--run", str(run)]) == 0
    result = json.loads((run / "probes" / "sweep_chosen.json").read_text())
    assert result["selected_on"] == "dev" and result["method"] == "ridge"
    assert result["metric"] == "pairwise_accuracy" and result["layers"] == store.layers
    grid = result["grid"]["pairwise_accuracy"]
    assert len(grid) == 3 and all(len(row) == len(store.positions) for row in grid)
    k = store.positions.index("prompt_end")
    # Chosen and rejected rows are identical at prompt_end, so no probe can order them there.
    assert all(row[k] == 0.5 for row in grid)
    best = result["best"]
    assert best["layer"] in store.layers and best["position"] in store.positions
    assert grid[store.layers.index(best["layer"])][store.positions.index(best["position"])] \
        == max(v for row in grid for v in row if v is not None)
    assert 0 <= best["test"]["pairwise_accuracy_ci_low"] <= best["test"]["pairwise_accuracy"] \
        <= best["test"]["pairwise_accuracy_ci_high"] <= 1
    assert Path(result["figure"]).read_bytes()[:4] == b"\x89PNG"
    rating = main(["probe", "sweep", "--acts", str(store.dir), "--run", str(run), "--label",
                   "rating", "--positions", "last", "mean"])
    assert rating == 0
    r_result = json.loads((run / "probes" / "sweep_rating.json").read_text())
    assert r_result["metric"] == "r" and set(r_result["grid"]) == {"r", "r2", "pairwise_accuracy"}

    assert main(["probe", "train", "--acts", str(store.dir), "--run", str(run), "--layer", "final",
                 "--fit.epochs", "5"]) == 0
    folder = run / "probes" / "probe_chosen"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["probes"]) == {"linear", "ridge", "mlp"}
    for m in metrics["probes"].values():
        assert set(m) == {"dev", "test", "fit"} and m["test"]["n_pairs"] > 0
    assert "shuffled_control" in metrics and "cosine" in metrics["linear_vs_ridge"]
    probe, meta = Probe.load(folder / "linear")
    assert (probe.layer, probe.position, meta["model"]) == ("final", "last", store.model)
    x, _ = store.features("final", "last")
    assert probe.scores(x[:4]).shape == (4,)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"probe_sweep_sweep_chosen", "probe_train_probe_chosen"} <= set(manifest["stages"])
    page = build_report(run).read_text()
    assert "Reward probes" in page and "Sweep chosen" in page and "Probes chosen" in page
    with pytest.raises(ValueError, match="no training row carries the label 'target.helpful'"):
        from rewardprompt.probes.train import ProbeTrainConfig, train_probes

        train_probes(ProbeTrainConfig(acts=str(store.dir), out=str(tmp_path / "p"),
                                      label="target.helpful", layer="final"))


def test_a_scorer_beside_the_probes_on_the_same_pairs(store, pairs_file, tiny_policy, tmp_path):
    from rewardprompt.probes.collect import stored_rows
    from rewardprompt.probes.train import ProbeTrainConfig, train_probes

    out = tmp_path / "probe"
    train_probes(ProbeTrainConfig(acts=str(store.dir), out=str(out), layer="final",
                                  position="resp_8", methods=["ridge"], control=False,
                                  n_boot=100, scorer="synthetic:length"))
    result = json.loads((out / "metrics.json").read_text())
    beside, probe = result["scorer"], result["probes"]["ridge"]
    # The same pairs as the probe: only those whose both replies reach 8 tokens.
    assert beside["test"]["n_pairs"] == probe["test"]["n_pairs"] > 0
    assert beside["test"]["n_pairs"] < sum(1 for r in store.rows if r["split"] == "test") // 2
    # By hand: the length scorer prefers the longer reply of each of those test pairs.
    planned = stored_rows(store)
    x, present = store.features("final", "resp_8")
    by_pair: dict[str, dict[bool, int]] = {}
    for i, r in enumerate(store.rows):
        if r["split"] == "test" and present[i]:
            by_pair.setdefault(r["pair_id"], {})[r["chosen"]] = i
    both = [p for p in by_pair.values() if len(p) == 2]
    words = [(min(len(planned[p[True]].response.split()), 40),
              min(len(planned[p[False]].response.split()), 40)) for p in both]
    assert len(both) == beside["test"]["n_pairs"]
    assert beside["test"]["pairwise_accuracy"] == pytest.approx(
        np.mean([(a > b) + 0.5 * (a == b) for a, b in words]))
    # A data file changed since the collection is refused, not misread.
    copy = tmp_path / "pairs.jsonl"
    shutil.copy(pairs_file, copy)
    acts = tmp_path / "acts"
    collect_activations(collect_cfg(tiny_policy, copy, acts, positions=["last"], layers=[-1]))
    copy.write_text(copy.read_text().replace("bake bread", "brew beer"))
    with pytest.raises(DataError, match="changed since"):
        stored_rows(ActivationStore(acts))


# ---------------------------------------------------------------- compare, targets, search
def _generations(path: Path, model: str, replies: list[str]) -> Path:
    """Generation rows in generate's format, 30 prompts, one reply each."""
    path.write_text("".join(json.dumps({
        "id": f"q{i}", "model": model, "response": replies[i % len(replies)],
        "prompt": [{"role": "user", "content": f"Tell me about topic {i}."}]}) + "\n"
        for i in range(30)))
    return path


def test_compare_base_and_tuned(store, tmp_path):
    from rewardprompt.probes.compare import ProbeCompareConfig, compare
    from rewardprompt.probes.train import ProbeTrainConfig, train_probes

    probe_dir = tmp_path / "probe"
    train_probes(ProbeTrainConfig(acts=str(store.dir), out=str(probe_dir), layer="final",
                                  methods=["ridge"], control=False, n_boot=100))
    base = _generations(tmp_path / "base.jsonl", "base", ["No.", "I'm sorry, I can't help."])
    tuned = _generations(tmp_path / "tuned.jsonl", "tuned", ["Sure! Here is a list: first, second."])
    run = tmp_path / "run"
    res = compare(ProbeCompareConfig(probe=str(probe_dir / "ridge"), generations=[str(base), str(tuned)],
                                     out=str(tmp_path / "cmp"), run=str(run), scorer="synthetic:length",
                                     n_boot=100))
    full = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["base"] == "base" and set(full["models"]) == {"base", "tuned"}
    tuned_m = full["models"]["tuned"]
    d = tuned_m["probe_diff_vs_base"]
    assert d["diff"] == pytest.approx(tuned_m["probe_mean"] - full["models"]["base"]["probe_mean"])
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    assert "r" in full["models"]["base"]["probe_vs_reward"]
    which = full["which_model"]
    assert which["classes"] == ["base", "tuned"] and 0 <= which["test"]["accuracy"] <= 1
    from rewardprompt.report.html import build_report

    page = build_report(run).read_text()
    assert "Base vs tuned" in page and f"{tuned_m['probe_mean']:.3f}" in page


def test_targets_view_reads_the_block(tiny_policy, tmp_path):
    from rewardprompt.policy.meta import write_policy_meta
    from rewardprompt.probes.targets import ProbeTargetsConfig, targets_view
    from rewardprompt.template import RewardTemplate

    policy = tmp_path / "policy"
    shutil.copytree(tiny_policy, policy)
    write_policy_meta(policy, {"template": RewardTemplate(dimensions=("helpful",)).to_dict(),
                               "conditioned": True, "max_prompt_tokens": 64})
    gens = tmp_path / "gens.jsonl"
    # Every prompt and reply three times, with three targets; the actual reward is 1 - target.
    gens.write_text("".join(json.dumps({
        "id": f"q{i}", "model": "conditioned", "conditioned": True,
        "prompt": [{"role": "user", "content": f"Tell me about topic {i}."}],
        "response": "Sure!" if i % 2 else "No.", "targets": {"helpful": t},
        "actual": {"helpful": round(1 - t, 2)}}) + "\n" for i in range(30) for t in (0.1, 0.5, 0.9)))
    res = targets_view(ProbeTargetsConfig(policy=str(policy), generations=[str(gens)],
                                          out=str(tmp_path / "tv"), n_boot=100,
                                          max_completion_tokens=8))
    s = ActivationStore(tmp_path / "tv" / "acts")
    assert s.index["reward_block"]["dimensions"] == ["helpful"]
    # Rows of one prompt and reply differ only in the target in the block: the policy reads the
    # block, so their prompt_end states differ, and their prompts are the block's length longer.
    x, _ = s.features("final", "prompt_end")
    by = {(r["id"], r["labels"]["target.helpful"]): i for i, r in enumerate(s.rows)}
    i, j = by["q0", 0.1], by["q0", 0.9]
    assert s.rows[i]["n_prompt_tokens"] == s.rows[j]["n_prompt_tokens"]
    assert not np.allclose(x[i], x[j])
    full = json.loads((tmp_path / "tv" / "targets.json").read_text())
    per = full["dimensions"]["helpful"]
    assert per["reward_label"] == "actual.helpful"
    assert len(per["target_r"]) == len(s.layers) and len(per["cosine"][0]) == len(s.positions)
    # reward = 1 - target exactly, so ridge finds the opposite direction for it in every cell.
    assert all(c is None or c == pytest.approx(-1.0, abs=1e-4) for row in per["cosine"] for c in row)
    assert res["best_target"]["helpful"]["layer"] in s.layers
    assert Path(full["figure"]).is_file()


def test_search_methods_and_costs(store, tiny_policy, tmp_path):
    from rewardprompt.probes.search import ProbeSearchConfig, search
    from rewardprompt.probes.train import ProbeTrainConfig, train_probes

    probe_dir = tmp_path / "probe"
    train_probes(ProbeTrainConfig(acts=str(store.dir), out=str(probe_dir), layer="final",
                                  methods=["ridge"], control=False, n_boot=50))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": [
        {"role": "user", "content": f"What is {i} plus {i}?"}]}) + "\n" for i in range(3)))
    res = search(ProbeSearchConfig(probe=str(probe_dir / "ridge"), prompts=str(prompts),
                                   scorer="synthetic:length:8", out=str(tmp_path / "s"), n=3,
                                   chunk_tokens=4, max_new_tokens=8, n_boot=50))
    full = json.loads((tmp_path / "s" / "search.json").read_text())
    m = full["methods"]
    assert set(m) == {"random", "best_of_n_probe", "best_of_n_rm", "stepwise_probe", "stepwise_rm",
                      "best_of_n_judge"}
    # The judge is the selecting RM here: its own best of n is at least the mean of the n.
    assert m["best_of_n_rm"]["gain_vs_random"] >= 0
    assert m["best_of_n_rm"]["judge_reward"] == m["best_of_n_judge"]["judge_reward"]
    # Equal n: best-of-n pays the random draw's passes plus one scoring pass per candidate.
    assert m["best_of_n_probe"]["passes_per_prompt"] == m["random"]["passes_per_prompt"] + 3
    assert m["stepwise_probe"]["passes_per_prompt"] > 0 and "gain_per_1k_passes" in m["stepwise_rm"]
    rows = [json.loads(x) for x in (tmp_path / "s" / "search.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 5 and set(res["methods"]) == set(m)


# ---------------------------------------------------------------- bad input
def test_bad_rows_name_file_line_and_field(tiny_policy, tmp_path):
    gens = tmp_path / "gens.jsonl"
    gens.write_text(json.dumps({"model": "a", "prompt": "hi", "response": "yo"}) + "\n"
                    + json.dumps({"model": "a", "prompt": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"gens.jsonl, line 2, field 'response'"):
        collect_activations(CollectConfig(generations=[str(gens)], model=str(tiny_policy),
                                          out=str(tmp_path / "a")))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b",
                                 "metadata": {"score_chosen": "high", "score_rejected": 1}}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 1, field 'metadata.score_chosen'"):
        collect_activations(CollectConfig(pairs=[str(pairs)], model=str(tiny_policy),
                                          out=str(tmp_path / "b"), skip_bad=False))
    bad_target = tmp_path / "t.jsonl"
    bad_target.write_text(json.dumps({"model": "a", "prompt": "hi", "response": "yo",
                                      "targets": {"helpful": 1.5}}) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl, line 1, field 'targets'"):
        collect_activations(CollectConfig(generations=[str(bad_target)], model=str(tiny_policy),
                                          out=str(tmp_path / "c")))
