"""Durations as people read them (progress lines, ETAs, dry-run estimates); no torch, no Hydra."""

from __future__ import annotations

import math


def hms(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on (rounded to the second, at least 0); `?` when unknown (inf, NaN)."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(max(0.0, seconds))), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
