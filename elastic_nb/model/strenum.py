"""``StrEnum``: states and kinds that are their own string values.

Like torch's ``WorkerState`` (``str, Enum``), members compare equal to their
values (``JobStatus.RUNNING == "running"``), and, like Python 3.11's
``enum.StrEnum`` (not in 3.10), they print and format as their values, so
they go into messages, f-strings and JSON unchanged.
"""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
