"""Elo and Bradley-Terry ratings of models from head-to-head matches judged on shared prompts.

Every model's generations for one prompt id are paired with every other model's (the i-th sample of
one against the i-th of the other), a judge says how likely the first response beats the second,
and two ratings are fitted from the same matches:

* **Elo**: the sequential update ``R_a += K (S - E_a)``. It depends on the order of the matches,
  so the rating is the mean over ``n_boot`` random orders (the usual way to remove that).
* **Bradley-Terry**: ``P(a beats b) = sigmoid(beta_a - beta_b)`` fitted by maximum likelihood,
  order-free, put on the Elo scale (``400 / ln 10`` points per unit of ``beta``).

Both get 95% intervals from a bootstrap that resamples *prompts* (all matches of a prompt move
together, since they share the prompt's difficulty), with a fresh match order in every resample
for Elo. The two should rank the models the same; ``spearman_elo_vs_bt`` says whether they do.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..stats import boot_counts, percentile_ci
from ..runs import ELO, atomic_write_json, in_run, messages_error, read_rows, recorded, run_generations
from ..rewards.scorer import Message, Scorer, scorer_for

if TYPE_CHECKING:
    from matplotlib.figure import Figure

def _expit(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # scipy loads on first use: `--help` stays fast

    return expit(x)


# Elo points per unit of Bradley-Terry log-odds: 10^(d/400) = e^beta.
ELO_PER_LOGIT = 400.0 / math.log(10.0)
# Match indices held in memory at once by the batched Elo runs (about 32 MB of int32).
_CHUNK_CELLS = 8_000_000


# ---------------------------------------------------------------- judges
@runtime_checkable
class Judge(Protocol):
    """Anything that says how likely response ``a`` beats response ``b`` for a prompt."""

    name: str

    def compare(self, prompts: list[list[Message]], a: list[str], b: list[str]) -> np.ndarray:
        """P(a beats b) in [0, 1], one per item (1 win, 0.5 tie, 0 loss, or a probability)."""
        ...


@dataclass
class ScorerJudge:
    """A judge from any scorer: the higher-scored response wins.

    ``temperature == 0`` gives hard outcomes (1, 0.5 on equal scores, 0);
    ``temperature > 0`` gives ``sigmoid((score_a - score_b) / temperature)`` on the scorer's [0, 1]
    scale, so small score differences count as near-ties instead of full wins.
    """

    scorer: Scorer
    temperature: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not self.name:
            self.name = self.scorer.name + (f"@T={self.temperature:g}" if self.temperature else "")

    def compare(self, prompts: list[list[Message]], a: list[str], b: list[str]) -> np.ndarray:
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"{len(prompts)} prompts but {len(a)} and {len(b)} responses")
        # Each response meets every other model, so scoring the distinct (prompt, response) pairs
        # once saves a reward model (n_models - 1)-fold work, and equal texts tie exactly.
        keys = [(json.dumps(p, sort_keys=True), r) for p, r in zip(prompts * 2, a + b)]
        index: dict[tuple[str, str], int] = {}
        first: list[int] = []
        for i, key in enumerate(keys):
            if key not in index:
                index[key] = len(first)
                first.append(i)
        pool_p, pool_r = prompts * 2, a + b
        scores = np.asarray(self.scorer.score([pool_p[i] for i in first],
                                              [pool_r[i] for i in first]), dtype=float)
        at = np.array([index[k] for k in keys], dtype=int)
        diff = scores[at[:len(a)]] - scores[at[len(a):]]
        if self.temperature == 0:
            return 0.5 + 0.5 * np.sign(diff)
        return _expit(diff / self.temperature)


# ---------------------------------------------------------------- config
@dataclass
class EloConfig:
    """Rate the models in generate-stage JSONL files against each other with a judge."""

    judge: str
    """Scorer spec of the judge (RM folder, synthetic:..., module:function)."""
    generations: list[str] = field(default_factory=list)
    """Generate-stage JSONL files, a row's model being its model field (default: every
    RUN/generate/*.jsonl but the steered samples)."""
    out: str | None = None
    """Write the JSON results here (default: RUN/elo.json; neither: printed only)."""
    run: str | None = None
    """A run directory: the stage records itself in its manifest."""
    k: float = 32.0
    """Elo K-factor."""
    initial: float = 1000.0
    """Starting Elo rating, and the mean of both rating scales."""
    n_boot: int = 1000
    """Random match orders for Elo, and prompt resamples for the CIs."""
    seed: int = 0
    """Seed of the match orders and the resamples."""
    temperature: float = 0.0
    """Judge: 0 gives hard win/tie/loss, > 0 the sigmoid of the score gap over it."""
    prior_ties: float = 1.0
    """Virtual tied matches added to every compared pair in the Bradley-Terry fit: without them
    the fitted gap is infinite when one model wins every match; with real data the fit is then
    still close to the plain maximum likelihood."""


# ---------------------------------------------------------------- matches
@dataclass
class _Matches:
    """Head-to-head matches as parallel arrays (model indices into ``models``)."""

    models: list[str]
    a: np.ndarray          # first model of each match
    b: np.ndarray          # second model
    group: np.ndarray      # prompt index 0..n_prompts-1 of each match
    prompts: list[list[Message]]
    resp_a: list[str]
    resp_b: list[str]
    n_prompts: int


def _load_matches(files: list[str]) -> _Matches:
    """Read generation rows and pair the i-th sample of every two models on each shared prompt."""
    if not files:
        raise ValueError("elo needs generation files (--generations), got none")
    # model -> prompt id -> [(prompt, response)], in file order: the order defines the sample index.
    samples: dict[str, dict[str, list[tuple[list[Message], str]]]] = {}
    for path in files:
        for row in read_rows(path, {"id": (str, int), "model": str, "response": str},
                             what="generations", optional={"prompt": messages_error}):
            # json keeps ids 7 and "7" apart, as read_jsonl does; a prompt missing is an empty one.
            pid = json.dumps(row["id"])
            samples.setdefault(row["model"], {}).setdefault(pid, []).append(
                (row.get("prompt") or [], row["response"]))
    models = list(samples)
    where = ", ".join(map(str, files))
    if len(models) < 2:
        found = f"only model {models[0]!r}" if models else "no rows"
        raise ValueError(f"{where}: found {found}; elo needs the outputs of at least 2 models")

    a_idx: list[int] = []
    b_idx: list[int] = []
    group: list[int] = []
    prompts: list[list[Message]] = []
    resp_a: list[str] = []
    resp_b: list[str] = []
    n_prompts = 0
    all_ids = dict.fromkeys(pid for m in models for pid in samples[m])
    for pid in all_ids:
        present = [i for i, m in enumerate(models) if pid in samples[m]]
        if len(present) < 2:
            continue
        for x, i in enumerate(present):
            for j in present[x + 1:]:
                for (prompt, ra), (_, rb) in zip(samples[models[i]][pid], samples[models[j]][pid]):
                    a_idx.append(i)
                    b_idx.append(j)
                    group.append(n_prompts)
                    prompts.append(prompt)
                    resp_a.append(ra)
                    resp_b.append(rb)
        n_prompts += 1
    if not n_prompts:
        raise ValueError(f"{where}: no prompt id has outputs from 2 or more models "
                         f"({', '.join(models)}), so there is nothing to compare")
    _check_connected(models, np.array(a_idx), np.array(b_idx), where)
    return _Matches(models, np.array(a_idx), np.array(b_idx), np.array(group), prompts, resp_a,
                    resp_b, n_prompts)


def _check_connected(models: list[str], a: np.ndarray, b: np.ndarray, where: str) -> None:
    """Models that never meet, even through others, have no common scale: refuse, don't guess."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(models)
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(m, m))
    n_comp, label = connected_components(graph, directed=False)
    if n_comp > 1:
        parts = ["{" + ", ".join(mm for mm, lab in zip(models, label) if lab == c) + "}"
                 for c in range(n_comp)]
        raise ValueError(f"{where}: the models fall into groups that share no prompts "
                         f"({' vs '.join(parts)}), so their ratings are not comparable")


# ---------------------------------------------------------------- Elo
def _elo_runs(a: np.ndarray, b: np.ndarray, s: np.ndarray, n_models: int,
              counts: np.ndarray, group: np.ndarray, k: float, initial: float,
              rng: np.random.Generator) -> np.ndarray:
    """Final Elo ratings of one sequential run per row of ``counts``, shape (runs, n_models).

    Run r plays every match of prompt g ``counts[r, g]`` times in a random order. All runs advance
    together one match per step, so the Python loop is over match positions, not runs x matches.
    Runs shorter than the longest are padded with a model playing itself to a tie, which moves
    nothing, so a random permutation of the padded row is a random order of the real matches.
    """
    pad = a.size
    a = np.append(a, 0)
    b = np.append(b, 0)
    s = np.append(s, 0.5)
    reps = counts[:, group].astype(np.int64)                 # (runs, matches): copies of each match
    lengths = reps.sum(1)
    order = np.full((counts.shape[0], int(lengths.max())), pad, dtype=np.int32)
    for r in range(counts.shape[0]):
        order[r, :lengths[r]] = np.repeat(np.arange(pad), reps[r])
    order = np.ascontiguousarray(rng.permuted(order, axis=1).T)  # (steps, runs): rows contiguous
    rows = np.arange(counts.shape[0])
    ratings = np.full((counts.shape[0], n_models), float(initial))
    for idx in order:
        ia, ib = a[idx], b[idx]
        expected = _expit((ratings[rows, ia] - ratings[rows, ib]) / ELO_PER_LOGIT)
        delta = k * (s[idx] - expected)
        ratings[rows, ia] += delta
        ratings[rows, ib] -= delta
    return ratings


def _elo_batched(m: _Matches, s: np.ndarray, counts: np.ndarray, k: float, initial: float,
                 rng: np.random.Generator) -> np.ndarray:
    """``_elo_runs`` over blocks of runs, so memory stays bounded for many matches."""
    per_run = max(1, int(counts[:, m.group].sum(1).max()))
    block = max(1, _CHUNK_CELLS // per_run)
    return np.concatenate([_elo_runs(m.a, m.b, s, len(m.models), counts[i:i + block], m.group,
                                     k, initial, rng)
                           for i in range(0, counts.shape[0], block)])


# ---------------------------------------------------------------- Bradley-Terry
def _bt_fit(pair_i: np.ndarray, pair_j: np.ndarray, wins: np.ndarray, total: np.ndarray,
            n_models: int, x0: np.ndarray | None = None) -> np.ndarray:
    """Bradley-Terry strengths (natural-log scale, mean 0) from per-pair win totals.

    ``wins[p]`` is how often ``pair_i[p]`` beat ``pair_j[p]`` in ``total[p]`` matches (ties and
    probabilities count fractionally). The first model is fixed at 0 to remove the shift
    invariance; the log-likelihood is concave, so a trust-region Newton method finds the optimum.
    """
    def nll(free: np.ndarray) -> tuple[float, np.ndarray]:
        beta = np.r_[0.0, free]
        d = beta[pair_i] - beta[pair_j]
        # -log sigmoid(x) = logaddexp(0, -x): no overflow for large gaps.
        value = np.sum(wins * np.logaddexp(0.0, -d) + (total - wins) * np.logaddexp(0.0, d))
        resid = total * _expit(d) - wins              # d(nll)/d(d) per pair
        grad = (np.bincount(pair_i, weights=resid, minlength=n_models)
                - np.bincount(pair_j, weights=resid, minlength=n_models))
        return float(value), grad[1:]

    def hess(free: np.ndarray) -> np.ndarray:
        beta = np.r_[0.0, free]
        p = _expit(beta[pair_i] - beta[pair_j])
        h = np.zeros((n_models, n_models))   # a weighted graph Laplacian of the pairs
        np.add.at(h, (pair_i, pair_j), -total * p * (1 - p))
        h = h + h.T
        h[np.diag_indices(n_models)] = -h.sum(1)
        return h[1:, 1:]

    start = np.zeros(n_models - 1) if x0 is None else x0[1:] - x0[0]
    # Newton steps with the exact Hessian converge in a handful of iterations for few models.
    from scipy import optimize

    res = optimize.minimize(nll, start, jac=True, hess=hess, method="trust-exact",
                            options={"gtol": 1e-8})
    beta = np.r_[0.0, res.x]
    return beta - beta.mean()


def _pair_table(m: _Matches, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray]:
    """Per (prompt, pair) win and match totals, shape (n_prompts, n_pairs), and the pairs."""
    n = len(m.models)
    code = m.a * n + m.b
    pairs, pair_of = np.unique(code, return_inverse=True)
    cell = m.group * pairs.size + pair_of.reshape(-1)
    size = m.n_prompts * pairs.size
    wins = np.bincount(cell, weights=s, minlength=size).reshape(m.n_prompts, pairs.size)
    total = np.bincount(cell, minlength=size).reshape(m.n_prompts, pairs.size).astype(float)
    return pairs // n, pairs % n, wins, total


# ---------------------------------------------------------------- entry
@recorded("elo")
def run_elo(cfg: EloConfig) -> dict[str, Any]:
    """Elo (mean over random orders) and Bradley-Terry ratings with prompt-bootstrap 95% CIs.

    Returns ``{"models": [...], "n_matches", "n_prompts", "judge", "spearman_elo_vs_bt", ...}``
    with the models sorted by Bradley-Terry rating, prints a table, and writes ``cfg.out``.
    """
    if cfg.n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {cfg.n_boot}")
    if cfg.prior_ties < 0:
        raise ValueError(f"prior_ties must be >= 0, got {cfg.prior_ties}")
    generations = cfg.generations or run_generations(cfg.run)
    m = _load_matches(generations)
    # The judge's scores of replies evaluate already scored come from memory (scorer_for).
    judge = ScorerJudge(scorer_for(cfg.judge), temperature=cfg.temperature)
    s = np.asarray(judge.compare(m.prompts, m.resp_a, m.resp_b), dtype=float).reshape(-1)
    if s.shape != m.a.shape or not np.all((s >= 0) & (s <= 1)):  # also rejects NaN
        raise ValueError(f"judge {judge.name} must return {m.a.size} values in [0, 1]")
    n_models = len(m.models)

    # Independent streams: changing n_boot for one part does not reshuffle the others.
    rng_order, rng_boot = (np.random.default_rng(x) for x in np.random.SeedSequence(cfg.seed)
                           .spawn(2))
    ones = np.ones((cfg.n_boot, m.n_prompts))
    elo = _elo_batched(m, s, ones, cfg.k, cfg.initial, rng_order).mean(0)
    counts = np.concatenate(list(boot_counts(m.n_prompts, cfg.n_boot, cfg.seed)))
    elo_boot = _elo_batched(m, s, counts, cfg.k, cfg.initial, rng_boot)

    pi, pj, wins_g, total_g = _pair_table(m, s)
    prior_w, prior_n = 0.5 * cfg.prior_ties, cfg.prior_ties
    beta = _bt_fit(pi, pj, wins_g.sum(0) + prior_w, total_g.sum(0) + prior_n, n_models)
    # One matrix product gives every resample's per-pair totals (prompt counts x per-prompt sums).
    boot_w, boot_n = counts @ wins_g + prior_w, counts @ total_g + prior_n
    beta_boot = np.stack([_bt_fit(pi, pj, boot_w[r], boot_n[r], n_models, x0=beta)
                          for r in range(cfg.n_boot)])
    bt, bt_boot = (ELO_PER_LOGIT * x + cfg.initial for x in (beta, beta_boot))

    per_model = []
    for i, name in enumerate(m.models):
        as_a, as_b = m.a == i, m.b == i
        # This model's score in each of its matches; a probability above 0.5 counts as a win.
        own = np.r_[s[as_a], 1.0 - s[as_b]]
        elo_lo, elo_hi = percentile_ci(elo_boot[:, i])
        bt_lo, bt_hi = percentile_ci(bt_boot[:, i])
        per_model.append({"model": name, "elo": float(elo[i]), "elo_ci_low": elo_lo,
                          "elo_ci_high": elo_hi, "bt": float(bt[i]), "bt_ci_low": bt_lo,
                          "bt_ci_high": bt_hi, "wins": int((own > 0.5).sum()),
                          "losses": int((own < 0.5).sum()), "ties": int((own == 0.5).sum()),
                          "n_matches": int(own.size)})
    per_model.sort(key=lambda r: -r["bt"])
    # Undefined (None) when either rating is constant, e.g. two models that tie every match.
    from scipy import stats

    rho = float(stats.spearmanr(elo, bt).statistic) if np.ptp(elo) and np.ptp(bt) else math.nan
    result = {"models": per_model, "n_matches": int(s.size), "n_prompts": m.n_prompts,
              "judge": judge.name, "spearman_elo_vs_bt": rho if math.isfinite(rho) else None,
              "k": cfg.k, "initial": cfg.initial, "n_boot": cfg.n_boot, "seed": cfg.seed,
              "prior_ties": cfg.prior_ties, "generations": list(generations)}
    print(format_table(result), flush=True)
    if cfg.out or cfg.run:
        atomic_write_json(in_run(cfg.run, cfg.out, ELO), result)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The ratings as a plain-text table, best model first."""
    def ci(r: dict, key: str) -> str:
        lo, hi = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
        return f"{r[key]:7.1f} [{lo:6.1f}, {hi:6.1f}]" if lo is not None else f"{r[key]:7.1f}"

    width = max([5] + [len(r["model"]) for r in result["models"]])
    lines = [f"{'model':<{width}}  {'Elo [95% CI]':<24}  {'Bradley-Terry [95% CI]':<24}  "
             f"{'W':>5} {'L':>5} {'T':>5} {'n':>6}"]
    for r in result["models"]:
        lines.append(f"{r['model']:<{width}}  {ci(r, 'elo'):<24}  {ci(r, 'bt'):<24}  "
                     f"{r['wins']:>5} {r['losses']:>5} {r['ties']:>5} {r['n_matches']:>6}")
    rho = result.get("spearman_elo_vs_bt")
    lines.append(f"{result['n_matches']} matches on {result['n_prompts']} prompts, judge "
                 f"{result['judge']}; Spearman(Elo, BT) = "
                 f"{'n/a' if rho is None else format(rho, '.3f')}")
    return "\n".join(lines)


def elo_figure(result: dict[str, Any]) -> Figure:
    """Elo and Bradley-Terry ratings with 95% CIs, one row per model, side by side."""
    from matplotlib.figure import Figure  # no pyplot: Figure renders through Agg, no GUI state

    rows = result["models"][::-1]              # best model at the top
    y = np.arange(len(rows))
    fig = Figure(figsize=(10, 1.2 + 0.45 * len(rows)))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title, colour in ((axes[0], "elo", "Elo (mean over orders)", "C0"),
                                   (axes[1], "bt", "Bradley-Terry (MLE)", "C1")):
        est = np.array([r[key] for r in rows], dtype=float)
        lo = np.array([r[f"{key}_ci_low"] if r.get(f"{key}_ci_low") is not None else r[key]
                       for r in rows], dtype=float)
        hi = np.array([r[f"{key}_ci_high"] if r.get(f"{key}_ci_high") is not None else r[key]
                       for r in rows], dtype=float)
        # A degenerate interval can sit a rounding error off its estimate; matplotlib wants >= 0.
        err = np.clip([est - lo, hi - est], 0.0, None)
        ax.errorbar(est, y, xerr=err, fmt="o", color=colour, capsize=4)
        ax.axvline(result.get("initial", 1000.0), color="k", lw=0.8, ls="--")
        ax.set(title=f"{title}, 95% CI", xlabel="rating")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [r["model"] for r in rows])
    fig.suptitle(f"{result['n_matches']} matches on {result['n_prompts']} prompts, judge "
                 f"{result['judge']}", fontsize=9)
    fig.tight_layout()
    return fig
