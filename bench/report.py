"""What every benchmark prints: each figure beside its target, with a verdict, per size.

A figure's target may be stated for one size (`Target.at`); at other sizes it is shown in
parentheses with no verdict. When a label has targets at several sizes, each size gets its own.
Verdicts are for a person to read; nothing here fails a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

Check = Callable[[dict[str, float]], tuple[str, str, bool | None]]
"""figures -> (what was measured, the target, met / missed / no verdict); KeyError: not measured."""

_VERDICTS = {True: "met", False: "MISSED", None: "—"}


@dataclass(frozen=True)
class Target:
    label: str
    at: int | None  # the size the target is stated for (None: every size)
    check: Check


class Measured(Protocol):
    n: int
    figures: dict[str, float]


def report(
    results: Sequence[Measured],
    targets: Sequence[Target],
    widths: tuple[int, int, int] = (46, 52, 30),
) -> None:
    """Print each size's figures beside their targets, then the raw figures as JSON."""
    label_w, shown_w, goal_w = widths
    for result in results:
        print(f"\n== N = {result.n:,} ==")
        print(f"{'figure':{label_w}} {'measured':{shown_w}} {'target':{goal_w}} verdict")
        chosen: dict[str, Target] = {}
        for target in targets:  # per label: its target at this size, else the first stated
            if target.label not in chosen or target.at == result.n:
                chosen[target.label] = target
        for target in chosen.values():
            try:
                shown, goal, ok = target.check(result.figures)
            except KeyError:
                continue
            if target.at is not None and target.at != result.n:
                goal = f"({goal} at {target.at:,})"
                ok = None
            print(f"{target.label:{label_w}} {shown:{shown_w}} {goal:{goal_w}} {_VERDICTS[ok]}")
        raw = {k: round(v, 3) for k, v in result.figures.items()}
        print(f"raw figures: {json.dumps(raw)}")
