"""Errors that name where bad input came from."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input: names the file, the line (1-based) and the field at fault."""

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, code: str = "invalid") -> None:
        self.reason, self.file, self.line, self.field, self.code = reason, file, line, field, code
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)
