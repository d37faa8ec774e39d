"""What a stage costs: tokens trained and sampled, priced from a table in a config file.

Stages record their token counts (``{"provider", "model", "trained_tokens", "prompt_tokens",
"completion_tokens"}``) under ``cost`` in their result; :func:`price` turns such a record into
money from ``configs/prices/prices.yaml`` (or the user's own file), and the report adds the stages up.
A provider's entry says when its prices were read and whether they were checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PRESET_DIR

#: The shipped price table.
PRICES = PRESET_DIR / "prices" / "prices.yaml"
#: Token counts a cost record may carry, and the price key each is charged at.
_TOKEN_PRICE = {"trained_tokens": "train", "prompt_tokens": "input", "completion_tokens": "output"}


@dataclass(frozen=True)
class Usage:
    """Tokens a stage used with one provider and model."""

    provider: str
    model: str
    trained_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    method: str = "supervised"
    """supervised or dpo: providers may charge training by method (``train_dpo``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "method": self.method,
                "trained_tokens": self.trained_tokens, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


def read_prices(path: str | Path | None = None) -> dict:
    """The price table: ``path``, else the file ``REWARDPROMPT_PRICES`` names, else the shipped
    one; checked for its shape."""
    import os

    import yaml

    path = Path(path or os.environ.get("REWARDPROMPT_PRICES") or PRICES)
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    for provider, entry in table.items():
        if not isinstance(entry, dict) or "read" not in entry:
            raise ValueError(f"{path}: provider {provider!r} needs a mapping with 'read' (the "
                             "date its prices were read)")
        for model, prices in {**entry.get("models", {}), "default": entry.get("default", {})
                              }.items():
            bad = [k for k, v in prices.items() if not isinstance(v, (int, float)) or v < 0]
            if bad:
                raise ValueError(f"{path}: {provider}.{model}: prices {bad} must be numbers >= 0 "
                                 "(US dollars per million tokens)")
    return table


def price(usage: Usage | dict, table: dict | None = None) -> dict[str, Any]:
    """The usage with its money: ``usd`` per token kind and in all, and where the price came
    from (``priced_as``: the model's own entry or the provider's default; ``unpriced`` when the
    table knows neither)."""
    u = usage if isinstance(usage, Usage) else Usage(**usage)
    table = read_prices() if table is None else table
    entry = table.get(u.provider)
    out: dict[str, Any] = {**u.to_dict()}
    if entry is None:
        return out | {"usd": None, "priced_as": "unpriced"}
    models = entry.get("models", {})
    name = u.model
    if name not in models and name.startswith("ft:") and name.count(":") >= 2:
        name = name.split(":")[1]  # OpenAI's ft:BASE:ORG:SUFFIX:ID is priced as its base
    own = models.get(name)
    prices = own if own is not None else entry.get("default")
    if prices is None:
        return out | {"usd": None, "priced_as": "unpriced"}
    usd = {}
    for kind, key in _TOKEN_PRICE.items():
        if key == "train" and u.method == "dpo" and "train_dpo" in prices:
            key = "train_dpo"
        usd[kind.removesuffix("_tokens")] = getattr(u, kind) * prices.get(key, 0.0) / 1e6
    return out | {"usd": round(sum(usd.values()), 6), "usd_by_kind": usd,
                  "priced_as": name if own is not None else "default",
                  "prices_read": entry.get("read"), "prices_verified": entry.get("verified", True),
                  "prices_source": entry.get("source")}


def cost_table(stages: dict[str, dict], table: dict | None = None) -> list[dict[str, Any]]:
    """One priced row per stage whose result carries a ``cost`` record (a dict or a list of
    them), in the order given."""
    table = read_prices() if table is None else table
    rows = []
    for name, result in stages.items():
        records = (result or {}).get("cost") if isinstance(result, dict) else None
        for rec in records if isinstance(records, list) else [records] if records else []:
            rows.append({"stage": name, **price(rec, table)})
    return rows


def _local_usd(seconds: float, table: dict) -> tuple[float | None, str]:
    """This machine's time, priced at the table's ``local`` ``hour`` (US dollars per hour)."""
    hour = (table.get("local") or {}).get("default", {}).get("hour")
    if hour is None:
        return None, "unpriced"
    return round(seconds * hour / 3600, 6), f"local, ${hour:g}/hour"


def stage_costs(manifest: dict, run_dir: str | Path, table: dict | None = None
                ) -> list[dict[str, Any]]:
    """What making each stage of a run cost, one row per stage in the manifest: its compute time
    (a stage restored from the stage cache counts the time of the run that made it, and says
    so), its tokens, and its money. A stage whose result carries a ``cost`` record (a provider's
    tokens) is priced from those; any other ran on this machine, and is priced at the table's
    ``local`` ``hour`` rate for its compute time, with the tokens it counted itself (SFT's
    trained tokens, sampling's new tokens)."""
    from .runs import read_json

    table = read_prices() if table is None else table
    rows = []
    for name, st in manifest.get("stages", {}).items():
        cached = st.get("cached_from") or {}
        compute = float(cached.get("saved_s", 0.0) if cached else st.get("wall_s") or 0.0)
        result: Any = st.get("result")
        if st.get("result_file") and (Path(run_dir) / st["result_file"]).is_file():
            result = read_json(Path(run_dir) / st["result_file"])
        result = result if isinstance(result, dict) else {}
        row: dict[str, Any] = {"stage": name, "compute_s": round(compute, 2),
                               "wall_s": st.get("wall_s"), "restored": bool(cached),
                               "trained_tokens": None, "prompt_tokens": None,
                               "completion_tokens": None}
        records = st.get("cost") or cost_table({name: result}, table)
        if records:
            for kind in ("trained_tokens", "prompt_tokens", "completion_tokens"):
                row[kind] = sum(int(c.get(kind) or 0) for c in records) or None
            priced = [c.get("usd") for c in records]
            row["usd"] = None if None in priced else round(sum(priced), 6)
            row["priced_as"] = ", ".join(sorted({f"{c.get('provider')}: {c.get('priced_as')}"
                                                 for c in records}))
        else:
            if result.get("tokens_seen"):
                row["trained_tokens"] = int(result["tokens_seen"])
            if result.get("mean_tokens") is not None and result.get("n"):
                row["completion_tokens"] = round(result["mean_tokens"] * result["n"])
            row["usd"], row["priced_as"] = _local_usd(compute, table)
        rows.append(row)
    return rows
