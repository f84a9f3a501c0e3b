"""Which timings (``model/ms_per_frame``) a report compares: those taken on a quiet machine.

A timing is only as good as the machine was quiet: on a busy 2-core machine SRResNet took
832/668/849/1588 ms per frame at 8/12/16/24 blocks (idle: 153/208/264/359), and a Pareto
front drawn from those numbers put 12 blocks ahead of 8. Each run records beside its timing
how disturbed it was (``training.outputs.complexity_metrics``):

- ``model/ms_per_frame_load``: the part of the usable CPUs' time other processes took while
  it was timed, 0..1 (``core.cpuload``);
- ``model/ms_per_frame_spread``: median timed pass / fastest - 1.

Rule (``RULE``): a run's timing was **measured under load, not comparable**, when its load
is above ``LOAD`` (others held more than a quarter of its cores) or its spread above
``SPREAD`` (the median pass took more than 20% longer than the fastest). Runs that recorded
neither (older runs) are "load not recorded". A variant's ``model/ms_per_frame`` is the mean
over its runs timed idle; when none was, over all its runs, and the variant is marked.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from sr_ablate.report.figures import members

LOAD = 0.25
SPREAD = 0.2
MS, LOAD_COL, SPREAD_COL = "model/ms_per_frame", "model/ms_per_frame_load", \
    "model/ms_per_frame_spread"
STATE = "model/ms_per_frame_state"  # report column: one of the three states below
IDLE, UNDER_LOAD, UNKNOWN = "idle", "under load", "load not recorded"
RULE = (f"a timing is 'measured under load, not comparable' when other processes took more "
        f"than {LOAD:.0%} of the CPUs' time while it was taken ({LOAD_COL} > {LOAD:g}) or "
        f"its median pass was more than {SPREAD:.0%} slower than its fastest "
        f"({SPREAD_COL} > {SPREAD:g})")


def run_states(runs: pd.DataFrame) -> pd.Series:
    """IDLE, UNDER_LOAD or UNKNOWN for each run (row of a runs frame) with a timing, by
    ``RULE``; NaN for runs without one."""
    nan = pd.Series(np.nan, index=runs.index)
    load, spread = runs.get(LOAD_COL, nan), runs.get(SPREAD_COL, nan)
    state = pd.Series(IDLE, index=runs.index, dtype=object)
    state[load.isna() & spread.isna()] = UNKNOWN
    state[(load > LOAD) | (spread > SPREAD)] = UNDER_LOAD
    state[runs.get(MS, nan).isna()] = np.nan
    return state


def mark(table: pd.DataFrame, group: pd.DataFrame) -> None:
    """Add to ``table`` (a ``results_table`` of ``group``'s runs), in place: per variant the
    worst ``model/ms_per_frame_load`` and ``model/ms_per_frame_spread`` of its runs and
    ``model/ms_per_frame_state``; and make its ``model/ms_per_frame`` (and
    ``model/s_per_30_frames``) the mean over its runs timed idle when it has any."""
    if MS not in table:
        return
    states, worst = [], {LOAD_COL: [], SPREAD_COL: []}
    for i, runs in enumerate(members(group, table)):
        state = run_states(runs)
        for col in worst:
            worst[col].append(runs[col].max() if col in runs else np.nan)
        idle = runs[state == IDLE]
        if not idle.empty:
            table.loc[i, MS] = idle[MS].mean()
            if "model/s_per_30_frames" in table:
                table.loc[i, "model/s_per_30_frames"] = 30 * idle[MS].mean() / 1000
        # one run timed idle makes the variant's number comparable; otherwise the worst
        known = state.dropna()
        states.append(np.nan if known.empty else IDLE if not idle.empty else
                      UNDER_LOAD if (known == UNDER_LOAD).any() else UNKNOWN)
    for col, values in worst.items():
        table[col] = values
    table[STATE] = states


def annotate(frame: pd.DataFrame, table: pd.DataFrame) -> None:
    """Mark, in place, the ``model/ms_per_frame`` cells (text) of ``frame``, a displayed
    form of ``table`` with the same rows, whose variant was not timed idle."""
    if STATE not in table or MS not in frame:
        return
    mark = {UNDER_LOAD: " (under load)", UNKNOWN: " (load not recorded)"}
    frame[MS] = [f"{v}{mark.get(s, '')}" if isinstance(v, str) and v else v
                 for v, s in zip(frame[MS], table[STATE])]


def note(table: pd.DataFrame) -> str:
    """The sentences (with a leading space) that state the rule and what it marked, for the
    notes under a table ('' when the table has no timing)."""
    if STATE not in table or table[STATE].isna().all():
        return ""
    counts = table[STATE].value_counts()
    text = f" model/ms_per_frame: the fastest of repeated passes of each run; {RULE}."
    if counts.get(UNDER_LOAD, 0):
        text += (f" {counts[UNDER_LOAD]} variant(s) were timed only under load: their ms per "
                 "frame are not comparable and the ms/frame Pareto front leaves them out.")
    if counts.get(UNKNOWN, 0):
        text += (f" {counts[UNKNOWN]} variant(s) recorded no load figure (older runs, whose "
                 "time is the median pass, not the fastest): they join the ms/frame Pareto "
                 "front only when no variant was timed idle.")
    return text
