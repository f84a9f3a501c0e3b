"""Result tables from the runs in MLflow (``sr-ablate report``, ``sr_ablate.cli.report``).

Writes ``reports/<name>/``: ``results.{md,csv,tex}``, a self-contained ``index.html`` and the
plots in ``plots/``. Per table of runs (one evaluation protocol, one model family): a table of
the variants (the swept factors; runs differing only in ``seed`` are repeats and pooled) with
their cost, then per evaluation set a compact table (``report.layout``): n, mean ± 95% CI over
seeds of PSNR and SSIM, Δ PSNR against bicubic and against the baseline with the verdict of
that comparison (``report.verdicts``: better, worse, no detectable difference, or cannot tell
and why), from a paired Wilcoxon test over the images and a t-test over the runs,
Holm-corrected over every variant × set the table tests. ``results.csv`` keeps every column
of every comparison. Runs evaluated under different protocols (fingerprints), or of model
families no sweep compared, never share a table; variants a sweep asked for without a
finished run are listed as missing, each with its error.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sr_ablate import UserError
from sr_ablate.report import html, layout, timings, verdicts
from sr_ablate.report.formats import (
    TEX_PREAMBLE,
    how_to_read,
    markdown,
    to_latex,
    variant_label,
)
from sr_ablate.report.study import (  # noqa: F401  (the names build has always offered)
    baseline_of,
    choose_baseline,
    expected_variants,
    failures_of,
    label,
    matching,
    seeds_command,
    select,
    why_missing,
)
from sr_ablate.report.table import (
    ALPHA,
    NOT_FACTORS,
    REPEATS,
    eval_sets,
    factors,
    families,
    latest_per_config,
    results_table,
    same,
)
from sr_ablate.report.verdicts import last_rise

__all__ = ["NOT_FACTORS", "REPEATS", "factors", "results_table", "write"]

FP = "tag:eval.fingerprint"
PROTOCOL_TAGS = ("eval.protocol", "eval.color_space", "eval.crop", "eval.lr_source", "eval.ssim")


def by_fingerprint(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Runs split by evaluation-protocol fingerprint: runs scored differently never share a
    table. Largest group first."""
    fp = runs[FP].fillna("unknown") if FP in runs.columns else pd.Series("unknown", runs.index)
    groups = [(k, runs[fp == k]) for k in fp.unique()]
    return sorted(groups, key=lambda g: -len(g[1]))


def protocol_line(runs: pd.DataFrame) -> str:
    first = runs.iloc[0]
    parts = [f"{t.split('.', 1)[1]}={first.get('tag:' + t)}" for t in PROTOCOL_TAGS
             if isinstance(first.get("tag:" + t), str)]
    return ", ".join(parts) or "not recorded"


def precision_line(runs: pd.DataFrame) -> str:
    """What the finished runs trained in (tag ``sr_ablate.precision``): one sentence, a
    warning when they differ (trainer.precision=auto chooses per machine)."""
    done = runs[runs["status"] == "FINISHED"]
    col = done.get("tag:sr_ablate.precision", pd.Series("not recorded", index=done.index))
    counts = col.fillna("not recorded").value_counts()
    if len(counts) <= 1:
        return f"Trained in {counts.index[0]}. " if len(counts) else ""
    mix = ", ".join(f"{k} ×{v}" for k, v in counts.items())
    return (f"Trained in different precisions ({mix}; tag sr_ablate.precision): bf16 is "
            "measured equal to fp32 only for SRResNet at trainer=cpu (docs/precision.md); "
            "to compare variants on training alone, run them with one trainer.precision. ")


def _tables(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, runs) per table: one evaluation fingerprint and one model family each."""
    out = []
    for fp, group in by_fingerprint(runs):
        fams = families(group)
        for fam in fams:
            kind = next((str(fam[c].iloc[0]) for c in ("tag:model.class", "model")
                         if c in fam and fam[c].notna().all()), "")
            title = f"Fingerprint {fp}" + (f", model {kind}" if len(fams) > 1 or kind else "")
            out.append((title, fam))
    return out


def write(runs: pd.DataFrame, out_dir: Path, name: str, baseline: dict | None = None,
          per_image: dict | None = None, figures=None, rises: dict | None = None,
          expected: list[dict] | None = None, failures: list | None = None,
          effect: float | None = None, definitions: list[str] | None = None) -> pd.DataFrame:
    """Write results.{md,csv,tex} and index.html for one experiment's runs; returns the
    (first) table. ``figures(group, table, out_dir, suffix)`` may draw plots for a group and
    return their paths (relative to ``out_dir``), which both documents show. ``rises``:
    ``verdicts.last_rise`` of each run's validation curve; ``expected``: the variants the
    sweep asked for ({key: value} each): their keys are columns even where one value
    finished, and each without a finished run is listed as missing with the error of its
    job from ``failures`` ([job overrides, message]) when known; ``effect``: the difference
    (dB) the seeds-needed estimates are for (default: the observed one); ``definitions``:
    the sweeps' definitions (the rule that chose the baseline, the command that adds seeds).

    Runs with different evaluation fingerprints or of different model families go to
    separate tables (``results.csv`` for the largest group, ``results-<n>.csv`` for the
    others) and the documents say why. Under each table: one verdict per comparison.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    kept, replaced = latest_per_config(runs)
    groups = _tables(kept)
    expected, failures, definitions = expected or [], failures or [], definitions or []
    intro = []
    if len(groups) > 1:
        intro.append(f"These runs fall into {len(groups)} tables: runs evaluated under "
                     "different protocols or sets (fingerprints) are not comparable, and "
                     "models of different families that no sweep compared are not compared.")
    if replaced:
        intro.append(f"{replaced} older run(s) of a configuration that was run again "
                     "(sweep.force=true) left out: per configuration and seed only the newest "
                     "FINISHED run counts.")
    missing = [f"{label(m)}: {why_missing(runs, m, failures)}" for m in expected
               if matching(kept, m).empty]
    swept = list(dict.fromkeys(k for e in expected for k in e))
    ctx = {"baseline": baseline, "per_image": per_image, "rises": rises, "effect": effect,
           "figures": figures, "swept": swept, "name": name,
           "why": _baseline_why(baseline, definitions, expected, runs, kept, failures)}
    sections, first = [], None
    for i, (title, group) in enumerate(groups):
        table, section = _section(title, group, "" if i == 0 else f"-{i + 1}", out_dir, ctx,
                                  seeds_command(group, definitions))
        sections.append(section)
        first = table if first is None else first
    if first is None:
        first = pd.DataFrame()
        first.to_csv(out_dir / "results.csv", index=False)
        sections.append({"title": "No finished runs", "text": "", "tables": [], "images": [],
                         "lines": [], "notes": ""})
    intro_text, how = " ".join(intro), how_to_read(any(s["lines"] for s in sections))
    (out_dir / "results.md").write_text(markdown(name, intro_text, missing, sections, how))
    (out_dir / "index.html").write_text(html.page(name, intro_text, sections, out_dir,
                                                  missing=missing, how=how))
    return first


def _baseline_why(baseline: dict | None, definitions: list[str], expected: list[dict],
                  runs: pd.DataFrame, kept: pd.DataFrame, failures: list) -> dict[str, str]:
    """What the documents say of the baseline: ``said``, the baseline and the rule that
    chose it; ``absent``, the sentence for a table without a finished run of it (it failed,
    or the sweep never asked for it)."""
    if not baseline:
        return {"said": "", "absent": "No baseline: no comparisons (name one with --baseline "
                                      "key=value)."}
    chosen, rule = choose_baseline(definitions)
    if not chosen or set(chosen) != set(baseline) or not all(
            same(chosen[k], v) for k, v in baseline.items()):
        rule = "given with --baseline"
    said = f"{label(baseline)} ({rule})"
    asked = any(all(k in e and same(e[k], v) for k, v in baseline.items()) for e in expected)
    if expected and not asked:
        absent = (f"The baseline, {said}, is none of the variants the sweep asked for: no "
                  "comparisons (name one with --baseline key=value).")
    elif expected and matching(kept, baseline).empty:
        absent = (f"The baseline, {said}, has no finished run "
                  f"({why_missing(runs, baseline, failures)}): no comparisons.")
    else:
        absent = f"The baseline, {said}, has no finished run in this table: no comparisons."
    return {"said": said, "absent": absent}


def _section(title: str, group: pd.DataFrame, suffix: str, out_dir: Path, ctx: dict,
             add_seeds=None) -> tuple[pd.DataFrame, dict]:
    """One table of runs: its rows written to results{suffix}.csv, its compact tables to
    results{suffix}.tex, and the section the documents show (title, lead, tables, verdict
    lines, notes, plots)."""
    table = results_table(group, ctx["baseline"], ctx["per_image"], ctx["rises"],
                          ctx["effect"], ctx["swept"])
    timings.mark(table, group)  # ms per frame from runs timed on a quiet machine only
    done = group[group["status"] == "FINISHED"].dropna(axis=1, how="all")
    sets, keys = eval_sets(done), factors(done, ctx["swept"])
    verdicts.mark(table, sets, ALPHA)
    table.to_csv(out_dir / f"results{suffix}.csv", index=False)
    base = table[table["baseline"]]
    base_name = variant_label(base.iloc[0], keys) if len(base) else ""
    scale = group["scale"].dropna().unique() if "scale" in group else []
    shown = [layout.variants(table, keys)] + [
        layout.set_table(table, s, keys, _scale_of(s, scale), base_name) for s in sets]
    timings.annotate(shown[0].frame, table)  # "(under load)" beside such timings
    tex = [f"% {ctx['name']}: {title} (results{suffix}.csv)", TEX_PREAMBLE, ""]
    stem = f"tab:{ctx['name']}{suffix}"
    tex += [to_latex(t, f"{stem}-{t.title}") for t in shown]
    (out_dir / f"results{suffix}.tex").write_text("\n".join(tex))
    lines = verdicts.lines(table, sets, lambda r, keys=keys: variant_label(r, keys), ALPHA,
                           add_seeds)
    tested = int(sum(table[f"{s}/p_holm"].notna().sum() for s in sets
                     if f"{s}/p_holm" in table))
    n = table["n"]
    seeds = f"{int(n.min())}" + (f"–{int(n.max())}" if n.nunique() > 1 else "")
    each = f" ({seeds} seed{'s' if n.max() > 1 else ''}" + (" each)" if len(n) > 1 else ")")
    said = (f"Baseline: {ctx['why']['said']}." if len(base) else ctx["why"]["absent"])
    if len(base) and len(table) == 1:
        said += " No comparisons: no other variant finished."
    text = (f"{int(n.sum())} finished run{'s' if n.sum() != 1 else ''} in {len(table)} "
            f"variant{'s' if len(table) != 1 else ''}{each}. {said} PSNR/SSIM: mean ± 95% CI "
            f"over seeds; every number behind a verdict is in results{suffix}.csv.")
    notes = (f"{precision_line(group)}Protocol: {protocol_line(group)}."
             + (f" Holm-corrected over the family of the {tested} comparisons that have a p "
                f"in this table (every variant × set: {', '.join(sets)}), at α={ALPHA}."
                if tested else "")) + timings.note(table)  # the rule for timings
    images = ctx["figures"](group, table, out_dir, suffix) if ctx["figures"] else []
    return table, {"title": f"{title} (results{suffix}.csv)", "text": text, "tables": shown,
                   "images": images, "lines": lines, "notes": notes}


def _scale_of(s: str, scales) -> str | None:
    """The scale set ``s`` was scored at: ``val_x3`` at 3, else the one every run used."""
    if "_x" in s and s.rsplit("_x", 1)[1].isdigit():
        return s.rsplit("_x", 1)[1]
    return str(scales[0]) if len(scales) == 1 else None


def registration(runs: pd.DataFrame, metric: str, lowest: bool, baseline: dict | None,
                 per_image: dict | None, rises: dict | None) -> tuple[str, float, str]:
    """What ``report --register`` registers, chosen from the report's own selection (the
    newest FINISHED run per configuration and seed; the largest table holding ``metric``:
    one fingerprint and family): the variant best by its **mean over seeds** of ``metric``
    (lowest with ``lowest``), then that variant's run best on validation (``val/psnr``, else
    ``metric``). Returns (run id, its value of ``metric``, the sentence saying which variant,
    its mean ± sd over seeds and its verdict against the baseline on the metric's set).
    UserError when no table of the selection holds ``metric``."""
    kept, _ = latest_per_config(runs)
    group = next((g for _, g in _tables(kept) if metric in g and g[metric].notna().any()), None)
    if group is None:
        have = sorted({c for c in kept.columns if c.endswith(("/psnr", "/ssim"))
                       and "bicubic" not in c})
        raise UserError(f"--metric {metric}: no finished run of this report's selection has it; "
                        f"choose one of {', '.join(have) or 'none (no finished runs)'}")
    table = results_table(group, baseline, per_image, rises)
    s = metric.split("/")[0]
    sets = eval_sets(group.dropna(axis=1, how="all"))
    verdicts.mark(table, sets, ALPHA)
    scored = table.dropna(subset=[metric])
    row = scored.loc[scored[metric].idxmin() if lowest else scored[metric].idxmax()]
    members = group[group["run_id"].str[:8].isin(row["run_id"].split())]
    by = "val/psnr" if "val/psnr" in members and members["val/psnr"].notna().any() else metric
    best = members.loc[members[by].idxmax() if by == "val/psnr" or not lowest
                       else members[by].idxmin()]
    keys = factors(group)
    spread = members[metric].std(ddof=1) if len(members) > 1 else float("nan")
    text = (f"variant {variant_label(row, keys)}: {metric} {row[metric]:.4f}"
            + (f" ± {spread:.4f} (sd over {len(members)} seeds)" if len(members) > 1 else
               " (1 seed: its spread between runs is unknown)")
            + f", the {'lowest' if lowest else 'highest'} mean of {len(scored)} variants; "
            f"its seed {best.get('seed', '?')} is the best of them on {by}")
    if table["baseline"].any() and not row["baseline"]:
        base = table[table["baseline"]].iloc[0]
        text += (f"; against the baseline ({variant_label(base, keys)}) on {s}: "
                 f"{verdicts.verdict(row, base, s, ALPHA)}" if f"{s}/p_holm" in table else "")
    elif row["baseline"]:
        text += "; it is the baseline"
    return best["run_id"], float(best[metric]), text


def rises_of(source, runs: pd.DataFrame) -> dict[str, float]:
    """``verdicts.last_rise`` of each FINISHED run's validation PSNR curve (``val/psnr``, else
    its first set's), read from ``source`` (a ``report.source.Source``)."""

    out = {}
    for _, r in runs[runs["status"] == "FINISHED"].iterrows():
        key = "val/psnr" if "val/psnr" in r and not pd.isna(r["val/psnr"]) else next(
            (c for c in r.index if c.endswith("/psnr") and "bicubic" not in c
             and not pd.isna(r[c])), None)
        if key:
            out[r["run_id"]] = last_rise(source.metric_history(r["run_id"], key))
    return out
