"""Probes on stored activations: targets, fitting (AdamW, ridge, MLP), metrics, files.

A probe reads one layer at one position. Features are standardised with the training side's
mean and standard deviation only. Three objectives:

* ``regression`` on a scalar label (a rating, an RM score, a target): mean squared error on the
  standardised label; reported as held-out R^2 and Pearson r, and, where rows come in pairs, as
  the share of pairs whose chosen reply gets the higher estimate;
* ``pairwise``: Bradley-Terry on the probe's score difference, -log sigmoid(s(chosen) -
  s(rejected)); reported as pairwise accuracy;
* ``classify``: which class a row belongs to (e.g. which model wrote the reply); accuracy
  beside the majority-class share.

Methods: ``linear`` (AdamW, early stopping on the dev loss), ``ridge`` (scikit-learn's closed
form, its penalty chosen on dev), ``mlp`` (one hidden layer, AdamW). Every interval is a 95%
percentile bootstrap over conversations (rows and pairs of one conversation are resampled
together), through the project's ``stats`` helpers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..runs import atomic_write_bytes, atomic_write_json, read_json
from ..stats import boot_counts, bootstrap_mean_ci, group_index, percentile_ci

if TYPE_CHECKING:
    import torch

Objective = Literal["regression", "pairwise", "classify"]
Method = Literal["linear", "ridge", "mlp"]
OBJECTIVES = ("regression", "pairwise", "classify")
METHODS = ("linear", "ridge", "mlp")
#: Labels that name a class, not a number.
CLASS_LABELS = ("model", "source")


def default_objective(label: str) -> Objective:
    """``chosen`` -> pairwise, ``model`` / ``source`` -> classify, any scalar -> regression."""
    if label == "chosen":
        return "pairwise"
    return "classify" if label in CLASS_LABELS else "regression"


@dataclass
class Hyper:
    """How AdamW probes train (defaults: the seed's best linear probe) and ridge's penalties."""

    lr: float = 1e-4
    """AdamW learning rate (linear and MLP probes)."""
    batch_size: int = 8
    """Rows (pairs, for the pairwise objective) per AdamW step."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    epochs: int = 100
    """At most this many passes over the training side."""
    patience: int = 10
    """Stop after this many epochs without a lower dev loss (the best epoch is kept)."""
    mlp_hidden: int = 256
    """Hidden units of the MLP probe."""
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    """Ridge penalties tried; the best on dev is kept."""
    seed: int = 0
    """Seeds initialisation, minibatch order, the shuffled control and the bootstrap."""


# ---------------------------------------------------------------- targets of one split
@dataclass
class Side:
    """One side of the split for one objective: feature rows and what they are scored on.

    ``idx`` indexes the store's rows. ``y``: the scalar label (regression) or class index
    (classify) per row; ``pairs``: (m, 2) positions in ``idx`` of chosen and rejected rows;
    ``groups``: the conversation of each row.
    """

    idx: np.ndarray
    y: np.ndarray
    pairs: np.ndarray
    groups: np.ndarray

    @property
    def n(self) -> int:
        return int(self.idx.size)


def build_side(rows: list[dict], present: np.ndarray, split: str, label: str, objective: Objective,
               *, sources: list[str] | None = None, models: list[str] | None = None,
               classes: list[str] | None = None) -> Side:
    """The rows of ``split`` that have the position (``present``) and the label, filtered by
    source and model; pairs are kept where both rows are there."""
    keep = []
    for i, r in enumerate(rows):
        if r["split"] != split or not present[i]:
            continue
        if sources and r["source"] not in sources:
            continue
        if models and r.get("model") not in models:
            continue
        if objective == "classify":
            value = r.get(label)
            if value is None or (classes is not None and value not in classes):
                continue
        elif objective == "regression" and label not in r["labels"]:
            continue
        elif objective == "pairwise" and r.get("pair_id") is None:
            continue
        keep.append(i)
    idx = np.array(keep, dtype=int)
    if objective == "classify":
        names = classes if classes is not None else sorted({str(rows[i][label]) for i in keep})
        y = np.array([names.index(str(rows[i][label])) for i in keep], dtype=float)
    elif objective == "regression":
        y = np.array([rows[i]["labels"][label] for i in keep], dtype=float)
    else:
        y = np.array([rows[i]["labels"]["chosen"] for i in keep], dtype=float)
    where: dict[str, dict[bool, int]] = {}
    for k, i in enumerate(keep):
        pid = rows[i].get("pair_id")
        if pid is not None:
            where.setdefault(pid, {})[bool(rows[i]["chosen"])] = k
    pairs = np.array([[w[True], w[False]] for w in where.values() if True in w and False in w],
                     dtype=int).reshape(-1, 2)
    groups = np.array([rows[i]["group"] for i in keep], dtype=object)
    return Side(idx=idx, y=y, pairs=pairs, groups=groups)


def class_names(rows: list[dict], label: str, split: str = "train", *,
                sources: list[str] | None = None, models: list[str] | None = None) -> list[str]:
    """The classes a classify probe learns: the values the training side's rows (those the
    filters keep) hold, sorted."""
    return sorted({str(r[label]) for r in rows if r["split"] == split and r.get(label) is not None
                   and (not sources or r["source"] in sources)
                   and (not models or r.get("model") in models)})


# ---------------------------------------------------------------- the probe
@dataclass
class Probe:
    """A fitted probe: standardisation, a torch module over standardised features, and what
    its output means (``y_mean``/``y_std`` undo the label's standardisation)."""

    method: str
    objective: str
    label: str
    layer: str
    position: str
    mean: np.ndarray
    std: np.ndarray
    module: Any
    y_mean: float = 0.0
    y_std: float = 1.0
    classes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The probe's estimate per row: the label (regression), a Bradley-Terry score
        (pairwise), or class logits (classify, shape (n, classes))."""
        import torch

        z = torch.from_numpy(((np.asarray(x, dtype=np.float32) - self.mean) / self.std)
                             .astype(np.float32))
        with torch.no_grad():
            s = self.module(z).numpy().astype(float)
        if self.objective == "classify":
            return s
        s = s.reshape(-1)
        return s * self.y_std + self.y_mean if self.objective == "regression" else s

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """``probe.safetensors`` (weights, standardisation) and ``probe.json`` (what it reads)."""
        import torch
        from safetensors.torch import save

        folder = Path(folder)
        tensors = {f"module.{k}": v.detach().contiguous() for k, v in self.module.state_dict().items()}
        tensors["mean"] = torch.from_numpy(self.mean.astype(np.float32))
        tensors["std"] = torch.from_numpy(self.std.astype(np.float32))
        atomic_write_bytes(folder / "probe.safetensors", save(tensors))
        meta = {"method": self.method, "objective": self.objective, "label": self.label,
                "layer": self.layer, "position": self.position, "y_mean": self.y_mean,
                "y_std": self.y_std, "classes": self.classes, "d": int(self.mean.size),
                "mlp_hidden": self.info.get("mlp_hidden"), "info": self.info, **(extra or {})}
        atomic_write_json(folder / "probe.json", meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> tuple[Probe, dict[str, Any]]:
        """A saved probe and its ``probe.json``."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "probe.json").is_file():
            raise FileNotFoundError(f"{folder} holds no probe (probe.json); train one with "
                                    "`rewardprompt probe train`")
        meta = read_json(folder / "probe.json")
        t = load_file(str(folder / "probe.safetensors"))
        d = int(meta["d"])
        n_out = len(meta["classes"]) if meta["objective"] == "classify" else 1
        module = _module(meta["method"], d, n_out, meta.get("mlp_hidden") or 0)
        module.load_state_dict({k[len("module."):]: v for k, v in t.items() if k.startswith("module.")})
        module.eval()
        probe = cls(method=meta["method"], objective=meta["objective"], label=meta["label"],
                    layer=meta["layer"], position=meta["position"], mean=t["mean"].numpy(),
                    std=t["std"].numpy(), module=module, y_mean=float(meta["y_mean"]),
                    y_std=float(meta["y_std"]), classes=list(meta["classes"]), info=meta["info"])
        return probe, meta


def _module(method: str, d: int, n_out: int, hidden: int) -> torch.nn.Module:
    import torch

    if method == "mlp":
        return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(),
                                   torch.nn.Linear(hidden, n_out))
    return torch.nn.Linear(d, n_out)


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training features; a constant feature keeps std 1 (it carries
    nothing, and dividing by 0 would make it infinite)."""
    mean = x.mean(0)
    std = x.std(0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


# ---------------------------------------------------------------- fitting
def _loss(objective: str, out: torch.Tensor, y: torch.Tensor,
          pairs: torch.Tensor | None) -> torch.Tensor:
    import torch.nn.functional as F

    if objective == "regression":
        return F.mse_loss(out.reshape(-1), y)
    if objective == "classify":
        return F.cross_entropy(out, y.long())
    s = out.reshape(-1)
    return F.softplus(-(s[pairs[:, 0]] - s[pairs[:, 1]])).mean()


def _fit_torch(method: str, objective: str, z_tr: np.ndarray, t_tr: Side, z_dev: np.ndarray,
               t_dev: Side, y_tr: np.ndarray, y_dev: np.ndarray, n_out: int,
               hp: Hyper) -> tuple[Any, dict[str, Any]]:
    """AdamW over minibatches of ``hp.batch_size`` rows (pairs for ``pairwise``), keeping the
    epoch with the lowest dev loss and stopping after ``hp.patience`` epochs without one."""
    import torch

    # A probe's matrices are tiny: a second thread only adds synchronisation (sixteen times
    # slower per step on a busy 2-core machine, measured), so training runs on one and gives it
    # back after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_torch_loop(method, objective, z_tr, t_tr, z_dev, t_dev, y_tr, y_dev, n_out, hp)
    finally:
        torch.set_num_threads(threads)


def _fit_torch_loop(method: str, objective: str, z_tr: np.ndarray, t_tr: Side, z_dev: np.ndarray,
                    t_dev: Side, y_tr: np.ndarray, y_dev: np.ndarray, n_out: int,
                    hp: Hyper) -> tuple[Any, dict[str, Any]]:
    import torch

    torch.manual_seed(hp.seed)
    module = _module(method, z_tr.shape[1], n_out, hp.mlp_hidden)
    if method == "linear":  # start from zero: the first steps follow the data, not the draw
        torch.nn.init.zeros_(module.weight)
        torch.nn.init.zeros_(module.bias)
    opt = torch.optim.AdamW(module.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    x_tr, x_dev = torch.from_numpy(z_tr), torch.from_numpy(z_dev)
    yt, yd = torch.from_numpy(y_tr.astype(np.float32)), torch.from_numpy(y_dev.astype(np.float32))
    p_tr, p_dev = torch.from_numpy(t_tr.pairs), torch.from_numpy(t_dev.pairs)
    n_items = len(t_tr.pairs) if objective == "pairwise" else len(z_tr)
    if n_items == 0:
        raise ValueError("no training items for this probe (no rows or pairs on the train side)")
    gen = torch.Generator().manual_seed(hp.seed)

    def dev_loss() -> float:
        module.eval()
        with torch.no_grad():
            if objective == "pairwise" and len(p_dev) == 0:
                return float("nan")
            return float(_loss(objective, module(x_dev), yd, p_dev))

    # Epoch 0 (the zero or random start) is a candidate too: training that only hurts on dev
    # keeps it.
    best, best_epoch, since, history = dev_loss(), 0, 0, []
    best_state = {k: v.clone() for k, v in module.state_dict().items()}
    for epoch in range(1, hp.epochs + 1):
        module.train()
        for batch in torch.randperm(n_items, generator=gen).split(hp.batch_size):
            if objective == "pairwise":
                pb = p_tr[batch]
                rows, inv = torch.unique(pb.reshape(-1), return_inverse=True)
                loss = _loss(objective, module(x_tr[rows]), yt[rows], inv.reshape(-1, 2))
            else:
                loss = _loss(objective, module(x_tr[batch]), yt[batch], None)
            opt.zero_grad()
            loss.backward()
            opt.step()
        current = dev_loss()
        history.append(round(current, 6))
        if current < best or not np.isfinite(best):
            best, best_epoch, since = current, epoch, 0
            best_state = {k: v.clone() for k, v in module.state_dict().items()}
        else:
            since += 1
            if since >= hp.patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    # A best epoch at the very end means the dev loss was still falling: more epochs (or a
    # larger lr) might do better, which the record says rather than hides.
    return module, {"best_epoch": best_epoch, "epochs_run": len(history),
                    "stopped_early": len(history) < hp.epochs,
                    "dev_loss": best if np.isfinite(best) else None,  # JSON has no NaN
                    "dev_loss_history": [h if np.isfinite(h) else None for h in history]}


def _fit_ridge(objective: str, z_tr: np.ndarray, t_tr: Side, z_dev: np.ndarray, t_dev: Side,
               y_tr: np.ndarray, y_dev: np.ndarray, n_out: int, hp: Hyper) -> tuple[Any, dict]:
    """scikit-learn's closed form for each penalty in ``hp.alphas``; the best on dev is kept.

    Pairwise: least squares of 1 on the chosen-minus-rejected difference, without an
    intercept (a difference has none), so the score's sign orders the pair.
    """
    from threadpoolctl import threadpool_limits

    # As with AdamW: these solves are small, and a second BLAS thread on a busy 2-core machine
    # made them 70 times slower (0.7 s against 0.01 s for six penalties, measured).
    with threadpool_limits(limits=1):
        return _fit_ridge_alphas(objective, z_tr, t_tr, z_dev, t_dev, y_tr, y_dev, n_out, hp)


def _fit_ridge_alphas(objective: str, z_tr: np.ndarray, t_tr: Side, z_dev: np.ndarray,
                      t_dev: Side, y_tr: np.ndarray, y_dev: np.ndarray, n_out: int,
                      hp: Hyper) -> tuple[Any, dict]:
    import torch
    from sklearn.linear_model import Ridge, RidgeClassifier

    best: tuple[float, float, Any] | None = None
    tried = {}
    for alpha in hp.alphas:
        if objective == "pairwise":
            d = z_tr[t_tr.pairs[:, 0]] - z_tr[t_tr.pairs[:, 1]]
            fit = Ridge(alpha=alpha, fit_intercept=False).fit(d, np.ones(len(d)))
            coef, intercept = fit.coef_.reshape(1, -1), np.zeros(1)
        elif objective == "regression":
            fit = Ridge(alpha=alpha).fit(z_tr, y_tr)
            coef, intercept = fit.coef_.reshape(1, -1), np.atleast_1d(fit.intercept_)
        else:
            fit = RidgeClassifier(alpha=alpha).fit(z_tr, y_tr.astype(int))
            coef, intercept = np.atleast_2d(fit.coef_), np.atleast_1d(fit.intercept_)
            if n_out == 2 and coef.shape[0] == 1:  # binary: one score; logits (-s/2, s/2)
                coef, intercept = np.vstack([-coef / 2, coef / 2]), np.r_[-intercept / 2, intercept / 2]
        out = z_dev @ coef.T + intercept
        score = _dev_score(objective, out, y_dev, t_dev)
        tried[str(alpha)] = score if np.isfinite(score) else None  # JSON has no -inf
        # Ties go to the larger penalty (alphas are scanned in the given, increasing, order).
        if best is None or score >= best[0]:
            best = (score, alpha, (coef, intercept))
    assert best is not None
    coef, intercept = best[2]
    module = torch.nn.Linear(coef.shape[1], coef.shape[0])
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(coef.astype(np.float32)))
        module.bias.copy_(torch.from_numpy(intercept.astype(np.float32)))
    return module.eval(), {"alpha": best[1], "dev_score_per_alpha": tried}


def _dev_score(objective: str, out: np.ndarray, y: np.ndarray, side: Side) -> float:
    """Higher is better: R^2 (regression), accuracy (pairwise, classify); -inf when undefined."""
    if objective == "regression":
        ss = float(((y - y.mean()) ** 2).sum())
        return 1.0 - float(((y - out.reshape(-1)) ** 2).sum()) / ss if ss > 0 else -np.inf
    if objective == "pairwise":
        if len(side.pairs) == 0:
            return -np.inf
        s = out.reshape(-1)
        diff = s[side.pairs[:, 0]] - s[side.pairs[:, 1]]
        return float(np.mean((diff > 0) + 0.5 * (diff == 0)))
    return float(np.mean(out.argmax(1) == y)) if len(y) else -np.inf


def fit_probe(method: str, objective: str, x_tr: np.ndarray, tr: Side, x_dev: np.ndarray,
              dev: Side, hp: Hyper, *, label: str, layer: str, position: str,
              classes: list[str] | None = None) -> Probe:
    """Fit one probe on the training side; the dev side chooses its epoch or penalty."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    if tr.n == 0 or dev.n == 0:
        raise ValueError(f"probe {label!r} at {layer} {position}: {tr.n} training and {dev.n} "
                         "dev rows; both sides need rows")
    mean, std = standardiser(x_tr)
    z_tr = ((x_tr - mean) / std).astype(np.float32)
    z_dev = ((x_dev - mean) / std).astype(np.float32)
    y_mean, y_std = 0.0, 1.0
    y_tr, y_dev = tr.y, dev.y
    if objective == "regression":  # the label is standardised on the training side too
        y_mean = float(tr.y.mean())
        y_std = float(tr.y.std()) if tr.y.std() > 0 else 1.0
        y_tr, y_dev = (tr.y - y_mean) / y_std, (dev.y - y_mean) / y_std
    n_out = len(classes or []) if objective == "classify" else 1
    if objective == "classify" and n_out < 2:
        raise ValueError(f"a classify probe needs at least 2 classes, got {classes}")
    if method == "ridge":
        module, info = _fit_ridge(objective, z_tr, tr, z_dev, dev, y_tr, y_dev, n_out, hp)
    else:
        module, info = _fit_torch(method, objective, z_tr, tr, z_dev, dev, y_tr, y_dev, n_out, hp)
    if method == "mlp":
        info["mlp_hidden"] = hp.mlp_hidden
    return Probe(method=method, objective=objective, label=label, layer=layer, position=position,
                 mean=mean, std=std, module=module, y_mean=y_mean, y_std=y_std,
                 classes=list(classes or []), info=info)


# ---------------------------------------------------------------- metrics
def r_and_r2_ci(y: np.ndarray, pred: np.ndarray, groups: np.ndarray | None, n_boot: int,
                seed: int) -> dict[str, float | None]:
    """Pearson r of (pred, y) and R^2 of pred as a prediction of y, each with a 95% bootstrap
    CI over ``groups``. Built from per-group sums, so all resamples are one matrix product."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(pred, dtype=float)
    out: dict[str, float | None] = {"r": None, "r_ci_low": None, "r_ci_high": None,
                                    "r2": None, "r2_ci_low": None, "r2_ci_high": None}
    if y.size < 3 or np.ptp(y) == 0:
        return out
    sres = ((y - p) ** 2).sum()
    out["r2"] = float(1.0 - sres / ((y - y.mean()) ** 2).sum())
    if np.ptp(p) > 0:
        out["r"] = float(np.corrcoef(p, y)[0, 1])
    gidx, g = group_index(groups, y.size)
    yc, pc = y - y.mean(), p - p.mean()  # centred: the sums stay well conditioned
    cols = [np.ones_like(y), yc, pc, yc * yc, pc * pc, yc * pc, (y - p) ** 2]
    sums = np.stack([np.bincount(gidx, weights=c, minlength=g) for c in cols], axis=1)
    rs, r2s = [], []
    for w in boot_counts(g, n_boot, seed):
        n, sy, sp, syy, spp, syp, sr = (w @ sums).T
        vy, vp = n * syy - sy * sy, n * spp - sp * sp
        with np.errstate(invalid="ignore", divide="ignore"):
            rs.append(np.where((vy > 1e-12) & (vp > 1e-12), (n * syp - sy * sp) / np.sqrt(vy * vp),
                               np.nan))
            r2s.append(np.where(vy > 1e-12, 1.0 - sr * n / vy, np.nan))
    if out["r"] is not None:
        out["r_ci_low"], out["r_ci_high"] = percentile_ci(np.concatenate(rs))
    out["r2_ci_low"], out["r2_ci_high"] = percentile_ci(np.concatenate(r2s))
    return out


def pairwise_correct(scores: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """1 where the chosen row scores higher, 0.5 on a tie, 0 otherwise; one value per pair."""
    s = np.asarray(scores, dtype=float).reshape(-1)
    diff = s[pairs[:, 0]] - s[pairs[:, 1]]
    return (diff > 0) + 0.5 * (diff == 0)


def _acc(correct: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int,
         key: str) -> dict[str, Any]:
    if correct.size == 0:
        return {key: None, f"{key}_ci_low": None, f"{key}_ci_high": None}
    lo, hi = bootstrap_mean_ci(correct, n_boot, seed, groups=groups)
    return {key: float(correct.mean()), f"{key}_ci_low": lo, f"{key}_ci_high": hi}


def evaluate(probe: Probe, x: np.ndarray, side: Side, *, n_boot: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """A probe's held-out metrics on one side, each with its bootstrap CI."""
    s = probe.scores(x)
    return side_metrics(probe.objective, s, side, n_boot=n_boot, seed=seed)


def side_metrics(objective: str, s: np.ndarray, side: Side, *, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """R^2 and r (regression), pairwise accuracy (where there are pairs), or accuracy and the
    majority share (classify), for scores ``s`` of ``side``'s rows."""
    out: dict[str, Any] = {"n": side.n, "n_pairs": int(len(side.pairs))}
    if objective == "classify":
        correct = (s.argmax(1) == side.y).astype(float)
        out.update(_acc(correct, side.groups, n_boot, seed, "accuracy"))
        counts = np.bincount(side.y.astype(int)) if side.n else np.zeros(1)
        out["majority_share"] = float(counts.max() / max(side.n, 1))
        return out
    if objective == "regression":
        out.update(r_and_r2_ci(side.y, s, side.groups, n_boot, seed))
    if len(side.pairs):
        out.update(_acc(pairwise_correct(s, side.pairs), side.groups[side.pairs[:, 0]], n_boot,
                        seed, "pairwise_accuracy"))
    else:
        out.update(pairwise_accuracy=None, pairwise_accuracy_ci_low=None,
                   pairwise_accuracy_ci_high=None)
    return out


def headline(objective: str) -> str:
    """The metric a sweep compares cells by."""
    return {"regression": "r", "pairwise": "pairwise_accuracy", "classify": "accuracy"}[objective]


def shuffled(side: Side, objective: str, seed: int) -> Side:
    """The same side with its labels permuted (pairwise: each pair's order flipped at random):
    a probe trained on it has nothing to find, so it measures chance."""
    rng = np.random.default_rng(seed)
    if objective == "pairwise":
        flip = rng.random(len(side.pairs)) < 0.5
        pairs = np.where(flip[:, None], side.pairs[:, ::-1], side.pairs)
        return Side(idx=side.idx, y=side.y, pairs=pairs, groups=side.groups)
    return Side(idx=side.idx, y=rng.permutation(side.y), pairs=side.pairs, groups=side.groups)



def split_sides(rows: list[dict], present: np.ndarray, label: str, objective: Objective, *,
                sources: list[str] | None = None,
                models: list[str] | None = None) -> tuple[dict[str, Side], list[str] | None]:
    """The train, dev and test sides for one label and objective, and the classes (classify)."""
    classes = (class_names(rows, label, sources=sources, models=models)
               if objective == "classify" else None)
    sides = {split: build_side(rows, present, split, label, objective, sources=sources,
                               models=models, classes=classes)
             for split in ("train", "dev", "test")}
    return sides, classes


def default_layer(n_blocks: int) -> str:
    """The seed's layer: block 24 of 32's input, i.e. three quarters of the way up."""
    return f"resid_pre.{int(0.75 * n_blocks)}"
