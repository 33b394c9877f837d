"""Claims as evidence: effects measured per seed, their distribution over a seeds sweep, and text that
follows the numbers.

A chapter that compares methods states *claims* ("HIPT beats the best bag-of-patches model on the
context cohort").  Each claim is an *effect* (a number, e.g. an AUC difference) and a *condition* on it
that can fail (e.g. ``> 0``).  The chapter measures the effects for its own seeds and writes them with
:func:`write_effects` into its ``results_dir``; ``hipt reproduce seeds`` runs the chapter over a grid
of cohort and split seeds and :func:`sweep_rows` gathers one row per seed combination into a record
(``benchmarks/results/seeds_sweep.json``).  :func:`summarize_claims` turns the rows into, per claim,
the median effect, an interval and the share of seed combinations where the claim holds; the chapter
shows that next to its own run and words the claim with :func:`verdict`, so that a claim which holds
on 4 seeds of 10 is reported as exactly that.

The chapters' findings helpers live in the submodules (:mod:`hipt.book.evidence.finetuning`, ...): each takes
numbers and returns text whose wording depends on them; the tests feed them numbers that contradict
the book's and check that the text changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hipt.io import atomic_write_text

__all__ = ["Claim", "EFFECTS_NAME", "write_effects", "read_effects", "sweep_rows", "summarize_claims", "verdict", "claim_lines",
           "holds_share_text", "fmt"]

#: file a chapter run writes its effects into (inside its ``results_dir``)
EFFECTS_NAME = "effects.json"


@dataclass(frozen=True)
class Claim:
    """A statement the book makes, as a condition on one measured effect.

    ``effect``: key of the effect in a chapter's :func:`write_effects` record; ``holds_if``: ``">"`` or
    ``"<"``; ``threshold``: the value the effect must pass; ``text``: the claim in words (present tense,
    as the book states it); ``chapter``: the chapter that makes it.
    """

    name: str
    chapter: str
    effect: str
    holds_if: str
    threshold: float
    text: str

    def holds(self, value: float) -> bool:
        """Whether one measured effect supports the claim (NaN never does)."""
        if value is None or not np.isfinite(value):
            return False
        if self.holds_if == ">":
            return bool(value > self.threshold)
        if self.holds_if == "<":
            return bool(value < self.threshold)
        raise ValueError(f"holds_if must be '>' or '<', not {self.holds_if!r}")

    @property
    def condition(self) -> str:
        return f"{self.effect} {self.holds_if} {self.threshold:g}"


def fmt(x: float, spec: str = "+.2f") -> str:
    """A number for a sentence; ``n/a`` for NaN/None."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


# ------------------------------------------------------------------------------------------ per run
def write_effects(results_dir: str | Path, chapter: str, seeds: Mapping[str, Any], effects: Mapping[str, float],
                  settings: Mapping[str, Any] | None = None) -> Path:
    """Write one chapter run's effects (``effects.json`` in ``results_dir``, atomically).

    ``seeds``: every seed of the run by name (``cohort_seed``, ``split_seed``, ``seed``); ``settings``:
    other settings a sweep varies (e.g. ``context_stain_jitter``).
    """
    path = Path(results_dir) / EFFECTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"chapter": chapter, "seeds": {k: (None if v is None else int(v)) for k, v in seeds.items()},
              "settings": dict(settings or {}),
              "effects": {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in effects.items()}}
    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    return path


def read_effects(path: str | Path) -> dict[str, Any]:
    """One run's :func:`write_effects` record (NaN for missing effects)."""
    rec = json.loads(Path(path).read_text())
    rec["effects"] = {k: (float("nan") if v is None else float(v)) for k, v in rec["effects"].items()}
    return rec


def sweep_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One flat row per run (chapter, each seed, each setting, each effect), from ``effects.json`` files."""
    rows = []
    for p in sorted(Path(x) for x in paths):
        rec = read_effects(p)
        rows.append({"chapter": rec["chapter"], **rec["seeds"], **rec.get("settings", {}), **rec["effects"]})
    return rows


# ------------------------------------------------------------------------------------------ sweep
def summarize_claims(rows: Sequence[Mapping[str, Any]] | pd.DataFrame, claims: Sequence[Claim],
                     by: Sequence[str] = ()) -> pd.DataFrame:
    """Per claim (and per value of the ``by`` settings): seed combinations, median effect, the 10–90 %
    range of the effect over seeds, and how many combinations the claim holds on.

    Rows lacking a claim's effect (another chapter, a method not run) are left out of that claim.
    """
    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    out = []
    for claim in claims:
        if claim.effect not in df.columns:
            continue
        sub = df[(df["chapter"] == claim.chapter) & df[claim.effect].notna()] if "chapter" in df else df
        groups = sub.groupby(list(by), dropna=False) if by else [((), sub)]
        for key, g in groups:
            v = g[claim.effect].astype(float).to_numpy()
            if len(v) == 0:
                continue
            key = key if isinstance(key, tuple) else (key,)
            n_hold = int(sum(claim.holds(x) for x in v))
            out.append({"claim": claim.name, **dict(zip(by, key)), "condition": claim.condition, "seeds": len(v),
                        "median": float(np.median(v)), "p10": float(np.quantile(v, 0.1)),
                        "p90": float(np.quantile(v, 0.9)), "min": float(v.min()), "max": float(v.max()),
                        "holds": n_hold, "share": n_hold / len(v)})
    return pd.DataFrame(out)


def holds_share_text(n_hold: int, n: int) -> str:
    """``"on 4 of 10 seed combinations"``."""
    return f"on {n_hold} of {n} seed combination{'s' if n != 1 else ''}"


def verdict(share: float) -> str:
    """How the book words a claim's support over a sweep (thresholds stated in the book's introduction).

    ``all``/``most`` (≥ 80 %), ``often`` (≥ 60 %), ``mixed`` (> 40 %), ``rarely`` (> 0), ``never``.
    """
    if not np.isfinite(share):
        return "untested"
    if share >= 1.0:
        return "holds on every seed combination"
    if share >= 0.8:
        return "holds on most seed combinations"
    if share >= 0.6:
        return "holds more often than not"
    if share > 0.4:
        return "is a coin toss over seeds"
    if share > 0.0:
        return "mostly does not hold"
    return "does not hold on any seed combination"


def claim_lines(claims: Sequence[Claim], effects: Mapping[str, float], sweep: pd.DataFrame | None = None,
                spec: str = "+.2f") -> list[str]:
    """One Markdown bullet per claim: this run's effect and whether it holds here, then the recorded
    sweep's median, 10–90 % range and share (``sweep``: :func:`summarize_claims` rows, or None when no
    sweep was recorded).  Claims whose effect this run did not measure are left out."""
    lines = []
    for c in claims:
        v = effects.get(c.effect, float("nan"))
        if v is None or not np.isfinite(v):
            continue
        here = "holds in this run" if c.holds(v) else "does **not** hold in this run"
        line = f"- {c.text} ({c.condition}): {fmt(v, spec)}, {here}"
        rows = sweep[sweep["claim"] == c.name] if sweep is not None and len(sweep) else None
        if rows is not None and len(rows):
            parts = []
            for _, r in rows.iterrows():
                extra = [f"{k} {r[k]:g}" for k in r.index if k not in _SUMMARY_COLUMNS and k != "claim"
                         and isinstance(r[k], (int, float)) and np.isfinite(r[k])]
                label = f" ({', '.join(extra)})" if extra else ""
                parts.append(f"recorded sweep{label}: median {fmt(r['median'], spec)} "
                             f"(10–90 %: {fmt(r['p10'], spec)} to {fmt(r['p90'], spec)}), "
                             f"{holds_share_text(int(r['holds']), int(r['seeds']))}: it {verdict(r['share'])}")
            line += "; " + "; ".join(parts)
        else:
            line += "; no seeds sweep recorded, so this is one draw"
        lines.append(line + ".")
    return lines


_SUMMARY_COLUMNS = ("claim", "condition", "seeds", "median", "p10", "p90", "min", "max", "holds", "share")
