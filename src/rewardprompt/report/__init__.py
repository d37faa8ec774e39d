"""Self-contained HTML reports built from a run directory's files."""
