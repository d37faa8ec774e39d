"""Preference data: HH-RLHF / UltraFeedback / generic JSONL to one structured form, and splits."""
from .hh import parse_transcript
from .preference import (SHIPPED, SHIPPED_GROUPS, ConvertConfig, PairSource, PreferencePair,
                         assign_split, convert,
                         drop_identical, source_files,
                         dialogue_to_text, load_preferences, pair_from_row, read_preferences,
                         shipped_path, split_key, split_pairs, split_point)

__all__ = ["SHIPPED", "SHIPPED_GROUPS", "source_files",
           "ConvertConfig", "PairSource", "PreferencePair", "assign_split", "convert",
           "dialogue_to_text", "drop_identical", "load_preferences", "pair_from_row", "parse_transcript",
           "read_preferences", "shipped_path", "split_key", "split_pairs", "split_point"]
