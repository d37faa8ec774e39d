"""The ``data export`` stage: the cleaned HH data as structured JSON, and a labelled set in each
hosted provider's fine-tuning format, each with a dataset card.

The original work wanted to give the community "better formatted json" than HH-RLHF's raw
transcripts. Here every pair becomes one JSON object: the dialogue as role/content messages, the
chosen and the rejected final reply, the side of the project's hash split (train / dev / test by
the first user turn, so a conversation never lands on two sides), and where it came from (file
and line). What cleaning dropped is counted per reason in the card.
"""
from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..runs import (atomic_write_json, atomic_write_text, file_hash, git_commit, iter_jsonl_lines,
                    parse_jsonl_line, write_jsonl)
from .preference import (SHIPPED, SHIPPED_GROUPS, assign_split, drop_identical, pair_from_row,
                         source_files, split_point)

SIDES = ("train", "dev", "test")
#: The license that comes with the shipped HH files.
_HH_LICENSE = Path(__file__).resolve().parent / "shipped" / "LICENSE-hh-rlhf"


@dataclass
class ExportConfig:
    """Write cleaned preference data (and optionally a labelled set) for others to use."""

    out: str
    """Folder to write: SOURCE/{train,dev,test}.jsonl, finetune/PROVIDER/*.jsonl, README.md."""
    sources: list[str] = field(default_factory=lambda: ["hh-harmless", "hh-helpful"])
    """Preference sources: shipped names or groups, or .jsonl(.gz) files."""
    test_fraction: float = 0.2
    """Share of the pairs on the test side (the project's locked split)."""
    dev_fraction: float = 0.1
    """Share of the pairs on the dev side."""
    labels: str | None = None
    """A labelled JSONL (as ``label`` writes it) to write in each provider's fine-tuning format."""
    providers: list[str] = field(default_factory=lambda: ["openai", "together"])
    """Fine-tuning formats to write the labelled set in."""
    template: dict = field(default_factory=dict)
    """RewardTemplate fields for the labelled set's reward block (``--template position top``);
    the position defaults to bottom, since a hosted chat model cannot be prefilled."""
    conditioned: bool = True
    """False: the labelled set without reward blocks (the unconditioned baseline's data)."""


def _export_source(source: str, out: Path, cfg: ExportConfig) -> dict:
    """One source's pairs, cleaned, by side; returns its counts and provenance."""
    names = SHIPPED_GROUPS.get(source, (source,))
    skipped: Counter = Counter()
    rows = []
    files = []
    for name in names:
        path = SHIPPED.get(name) or Path(name)
        if not path.is_file():
            raise ValueError(f"data export reads files and shipped names; {name!r} is neither "
                             "(convert a Hub dataset first with `rewardprompt data convert-hh`)")
        files.append({"name": name, "file": path.name, "sha256": file_hash(path)})
        for line, raw in iter_jsonl_lines(path):
            from ..errors import DataError

            try:
                pair = pair_from_row(parse_jsonl_line(raw, file=str(path), line=line),
                                     file=str(path), line=line)
            except DataError as e:
                skipped[e.code] += 1
                continue
            rows.append((pair, name, line))
    pairs, n_identical = drop_identical([p for p, _, _ in rows], source, drop=True)
    kept = {id(p) for p in pairs}
    by_side: dict[str, list[dict]] = {s: [] for s in SIDES}
    for pair, name, line in rows:
        if id(pair) not in kept:
            continue
        side = assign_split(pair, cfg.test_fraction, dev_fraction=cfg.dev_fraction)
        by_side[side].append({**pair.to_dict(), "split": side,
                              "split_point": round(split_point(pair), 8),
                              "source": {"name": name, "line": line}})
    folder = out / source.replace("/", "_")
    for side, side_rows in by_side.items():
        write_jsonl(folder / f"{side}.jsonl", side_rows)
    return {"files": files, "counts": {s: len(v) for s, v in by_side.items()},
            "skipped": dict(skipped) | ({"identical_pair": n_identical} if n_identical else {}),
            "folder": folder.name}


def _card(cfg: ExportConfig, sources: dict, finetune: dict) -> str:
    """The dataset card: what is here, where it came from, how it was cleaned and split."""
    lines = ["# rewardprompt export", "",
             "Preference pairs from Anthropic's HH-RLHF (and any other sources named below), "
             "cleaned and split by `rewardprompt data export`.", "",
             f"- rewardprompt commit: `{git_commit() or 'unknown'}`",
             f"- split: sha256('rewardprompt' + first user turn) in [0, 1): test below "
             f"{cfg.test_fraction}, dev below {cfg.test_fraction + cfg.dev_fraction}, else train. "
             "Pairs of one conversation share their first user turn, so they share a side.",
             "", "## Fields", "",
             "- `id`: the pair's id (a hash of its content where the source had none)",
             "- `prompt`: the dialogue before the final reply, as `{role, content}` messages "
             "(roles `user` and `assistant`; back-to-back turns of one role merged; contents "
             "stripped); it ends with a user turn",
             "- `chosen`, `rejected`: the two final assistant replies",
             "- `split`, `split_point`: the side of the hash split and the number behind it",
             "- `source`: the shipped file's name and the line of the raw row", "",
             "## Sources", "", "| source | train | dev | test | skipped | files (sha256) |",
             "|---|---|---|---|---|---|"]
    for name, s in sources.items():
        c = s["counts"]
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(s["skipped"].items())) or "none"
        files = "<br>".join(f"{f['file']} ({f['sha256'][:12]})" for f in s["files"])
        lines.append(f"| {name} | {c['train']} | {c['dev']} | {c['test']} | {skipped} | {files} |")
    lines += ["", "Skipped rows, by reason: `empty_reply` (a final reply with no text), "
              "`no_final_assistant` (the transcript does not end with an Assistant turn), "
              "`identical_pair` (chosen and rejected are the same text, so no preference), and "
              "any other parse failure by its code.", ""]
    if finetune:
        lines += ["## Fine-tuning files", "", "The labelled set in each provider's format "
                  "(`finetune/PROVIDER/`), with the reward block in the prompt.", ""]
        lines += [f"- {p}: " + ", ".join(f"`{k}` ({v} rows)" for k, v in f.items())
                  for p, f in finetune.items()]
        lines.append("")
    lines += ["## License", "", "HH-RLHF is released by Anthropic under the MIT license; its "
              "text is in `LICENSE-hh-rlhf` beside this card.", ""]
    return "\n".join(lines)


def export_data(cfg: ExportConfig) -> dict:
    """Write the cleaned sources, the labelled set's fine-tuning files and the card."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = {s: _export_source(s, out, cfg) for s in cfg.sources}
    finetune: dict[str, dict[str, int]] = {}
    if cfg.labels:
        from ..hosted.chatfile import export_labelled

        finetune = export_labelled(cfg.labels, out / "finetune", cfg.providers,
                                   template={"position": "bottom", **cfg.template},
                                   conditioned=cfg.conditioned)
    if any(source_files(s) and s.startswith("hh-") for s in cfg.sources):
        shutil.copyfile(_HH_LICENSE, out / "LICENSE-hh-rlhf")
    atomic_write_text(out / "README.md", _card(cfg, sources, finetune))
    summary = {"out": str(out), "sources": sources, "finetune": finetune}
    atomic_write_json(out / "export.json", summary)
    return summary
