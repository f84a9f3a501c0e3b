"""Result tables from the runs in MLflow (``sr-ablate report``, ``sr_ablate.cli.report``).

Writes ``reports/<name>/``: ``results.{md,csv,tex}``, a self-contained ``index.html`` and the
plots in ``plots/``. One row per variant (the swept factors; runs differing only in ``seed``
are repeats and pooled): n, mean ± 95% confidence interval over seeds of PSNR and SSIM on
every evaluation set and scale, bicubic PSNR/SSIM, Δ PSNR against bicubic and against the
baseline variant with its interval over images, and a paired Wilcoxon test over the images
(each variant's per-image PSNR averaged over its seeds first), Holm-corrected over every
variant x set the table tests; final training loss, parameters, GFLOPs, ms per frame and wall
time. Under each table one verdict per comparison (``report.verdicts``): better, worse,
no detectable difference, or cannot tell and why. Runs evaluated under different protocols
(fingerprints), or of model families no sweep compared, never share a table; variants a
sweep asked for without a finished run are listed as missing.
"""
from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from sr_ablate import UserError
from sr_ablate.report import html, verdicts
from sr_ablate.report.formats import display, to_latex, to_markdown, variant_label
from sr_ablate.report.table import (
    ALPHA,
    NOT_FACTORS,
    REPEATS,
    eval_sets,
    factors,
    families,
    latest_per_config,
    results_table,
)
from sr_ablate.report.verdicts import RULE, last_rise

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


def baseline_of(runs: pd.DataFrame, definitions: list[str]) -> dict | None:
    """The baseline a sweep file declares (``baseline: <variant>`` or ``{key: value}``)."""
    for spec in map(_yaml, definitions):
        b = spec.get("baseline") if isinstance(spec, dict) else None
        if isinstance(b, str):
            return {"variant": b}
        if isinstance(b, dict):
            return b
    return None


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
    sweep asked for ({key: value} each), listed as missing when no run of theirs finished,
    with the error of their job from ``failures`` ([job overrides, message]) when known;
    ``effect``: the difference (dB) the seeds-needed estimates are for (default: the
    observed one); ``definitions``: the sweeps' definitions (the command that adds seeds).

    Runs with different evaluation fingerprints or of different model families go to
    separate tables (``results.csv`` for the largest group, ``results-<n>.csv`` for the
    others) and the documents say why. Under each table: one verdict per comparison.
    """

    out_dir.mkdir(parents=True, exist_ok=True)
    kept, replaced = latest_per_config(runs)
    groups = _tables(kept)
    intro = []
    if len(groups) > 1:
        intro.append(f"These runs fall into {len(groups)} tables: runs evaluated under "
                     "different protocols or sets (fingerprints) are not comparable, and "
                     "models of different families that no sweep compared are not compared.")
    if replaced:
        intro.append(f"{replaced} older run(s) of a configuration that was run again "
                     "(sweep.force=true) left out: per configuration and seed only the newest "
                     "FINISHED run counts.")
    sections, first = [], None
    for i, (title, group) in enumerate(groups):
        table, section = _section(title, group, "" if i == 0 else f"-{i + 1}", out_dir,
                                  baseline, per_image, rises, figures, effect,
                                  seeds_command(group, definitions or []))
        sections.append(section)
        first = table if first is None else first
    missing = [e for e in expected or [] if _matching(kept, e).empty]
    if missing:
        intro.append("Missing (asked for by the sweep, no finished run): " + "; ".join(
            ", ".join(f"{k}={v}" for k, v in m.items()) + f" ({_why(runs, m, failures or [])})"
            for m in missing) + ".")
    if first is None:
        first = pd.DataFrame()
        first.to_csv(out_dir / "results.csv", index=False)
        sections.append({"title": "No finished runs", "text": "", "table": None, "images": [],
                         "lines": []})
    intro_text = " ".join(intro)
    (out_dir / "results.md").write_text(_markdown(name, intro_text, sections))
    (out_dir / "index.html").write_text(html.page(name, intro_text, sections, out_dir))
    return first


def _section(title: str, group: pd.DataFrame, suffix: str, out_dir: Path, baseline, per_image,
             rises, figures, effect=None, add_seeds=None) -> tuple[pd.DataFrame, dict]:
    """One table: its rows written to results{suffix}.csv/.tex, and the section the documents
    show (title, explanation, displayed table, plots, verdict lines)."""
    table = results_table(group, baseline, per_image, rises, effect)
    sets = eval_sets(group[group["status"] == "FINISHED"].dropna(axis=1, how="all"))
    verdicts.mark(table, sets, ALPHA)
    table.to_csv(out_dir / f"results{suffix}.csv", index=False)
    shown = display(table)
    (out_dir / f"results{suffix}.tex").write_text(to_latex(shown))
    keys = factors(group)
    lines = verdicts.lines(table, sets, lambda r, keys=keys: variant_label(r, keys), ALPHA,
                           add_seeds)
    tested = int(sum(table[f"{s}/p_holm"].notna().sum() for s in sets
                     if f"{s}/p_holm" in table))
    text = (f"{int(table['n'].sum())} finished runs in {len(table)} variants. Protocol: "
            f"{protocol_line(group)}; PSNR/SSIM: mean ± 95% CI over seeds of each set's "
            f"per-image mean. {precision_line(group)}"
            f"{_stats_note(table, baseline, sets, tested)} wall_s: "
            "seconds from a run's start to its end on the machine that ran it, "
            "comparable only between runs on one otherwise idle machine "
            "(python -m sr_ablate bench measures speed).")
    images = figures(group, table, out_dir, suffix) if figures is not None else []
    return table, {"title": f"{title} (results{suffix}.csv)", "text": text, "table": shown,
                   "images": images, "lines": lines}


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


def _markdown(name: str, intro: str, sections: list[dict]) -> str:
    md = [f"# {name}\n", intro + "\n"] if intro else [f"# {name}\n"]
    for sec in sections:
        md.append(f"## {sec['title']}\n\n{sec['text']}\n")
        if sec["table"] is not None:
            md.append(to_markdown(sec["table"]))
        md += [f"- {line}" for line in sec["lines"]] + ([""] if sec["lines"] else [])
        md += [f"![{Path(p).stem}]({p})\n" for p in sec["images"]]
    return "\n".join(md)


def _stats_note(table: pd.DataFrame, baseline: dict | None, sets: list[str], tests: int) -> str:
    if not baseline:
        return "No baseline: no comparisons (name one with --baseline key=value)."
    name = ", ".join(f"{k}={v}" for k, v in baseline.items())
    if not table["baseline"].any():
        return f"The baseline ({name}) has no finished run here: no comparisons."
    return (f"Δ against the baseline ◆ ({name}): the mean difference over the images and runs "
            "the comparison uses, with the signed-rank shift (Hodges–Lehmann) and two 95% "
            "intervals: over images (exact signed-rank interval of the shift of the "
            "seed-averaged per-image PSNR) and over runs (t-interval of the difference of "
            "per-seed set means: paired over shared seeds, else Welch). A design is called "
            "better or worse only when both tests reject (p of the claim = the larger p), "
            f"Holm-corrected over the family of the {tests} comparisons that have a p in this "
            f"table (every variant × set: {', '.join(sets)}), at α={ALPHA}; with one seed on a "
            "side only the images are tested and the verdict speaks of the trained models. "
            f"Verdicts withhold a conclusion for a model below bicubic, one not converged or "
            f"unstable ({RULE}), or a comparison that could not reach α in this family "
            "(underpowered). ")


def seeds_command(group: pd.DataFrame, definitions: list[str]) -> Callable[[int], str] | None:
    """``add(n)``: the command that brings every variant of ``group`` to ``n`` seeds: a sweep
    file's ``sweep=<study>`` with the extra overrides all its runs were given, or the one
    command line of a ``-m`` sweep, with a seed list. None when no single study command
    made these runs (e.g. two command lines)."""
    specs = [spec for spec in map(_yaml, definitions) if isinstance(spec, dict)]
    files = {spec["study"]: spec for spec in specs if spec.get("study")}
    lines = {str(spec["command"]) for spec in specs if spec.get("command")}
    if "seed" not in group or len(files) + len(lines) != 1:
        return None
    if files:
        (study, spec), = files.items()
        skip = {_key(t) for t in spec.get("overrides") or []} | set(spec.get("grid") or {})
        tokens = [set(str(t).split()) for t in group.get(
            "tag:overrides", pd.Series(dtype=str)).fillna("")]
        common = set.intersection(*tokens) if tokens else set()
        words = ["python", "-m", "sr_ablate", f"sweep={study}",
                 *sorted(t for t in common if _key(t) not in skip | _GENERATED)]
    else:
        words = ["python", "-m", "sr_ablate",
                 *(t for t in next(iter(lines)).split() if _key(t) != "seed")]
    done = sorted({int(v) for v in group["seed"].dropna() if str(v).lstrip("-").isdigit()})

    def add(n: int) -> str:
        # the first n seeds of those already run (then new ones): re-running the study skips
        # every run already FINISHED, so each variant runs only the seeds it lacks
        seeds, k = list(done), (done[-1] + 1 if done else 0)
        while len(seeds) < n:
            seeds.append(k)
            k += 1
        return " ".join([*words[:3], *map(shlex.quote, words[3:]),
                         f"seed={','.join(map(str, seeds[:n]))}"])
    return add


def _yaml(text: str):
    """A sweep definition parsed, None when it is not YAML (the report then ignores it)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _key(token: str) -> str:
    return str(token).split("=", 1)[0].lstrip("+~")


_GENERATED = {"study", "tracking.experiment", "study_variant", "seed", "variant",
              "hydra.searchpath"}


def _matching(runs: pd.DataFrame, expected: dict) -> pd.DataFrame:
    """The runs of ``runs`` that have every {param: value} of ``expected``."""
    if runs.empty or any(k not in runs for k in expected):
        return runs.iloc[0:0]
    ok = pd.Series(True, index=runs.index)
    for k, v in expected.items():
        ok &= runs[k].astype(str) == str(v)
    return runs[ok]


def _why(runs: pd.DataFrame, expected: dict, failures: list) -> str:
    """Why a variant has no finished run: the error its sweep recorded for the job
    (``failures``: [job overrides, message]), else its newest unfinished run's status."""
    for job, message in failures:
        tokens = {t.lstrip("+~") for t in str(job).split()}
        if all(f"{k}={v}" in tokens or (k == "variant" and f"study_variant={v}" in tokens)
               for k, v in expected.items()):
            return f"failed: {message}"
    mine = _matching(runs[runs["status"] != "FINISHED"], expected)
    if mine.empty:
        return "no run recorded: the job failed before training (see the sweep's output)"
    r = mine.sort_values("start_time").iloc[-1]
    err = r.get("tag:sr_ablate.error")
    return f"{r['status']}" + (f": {err}" if isinstance(err, str) else "")


def select(runs: pd.DataFrame, name: str, parents: pd.DataFrame | None = None) -> pd.DataFrame:
    """Runs of experiment ``name``, or of the sweep whose id (or parent run id) is ``name``:
    its own runs and the FINISHED runs it reused (listed on its parent run, ``parents``)."""
    sub = runs[runs["experiment"] == name]
    if sub.empty:
        for col in ("tag:sr_ablate.sweep_id", "tag:mlflow.parentRunId"):
            if col in runs.columns:
                sub = runs[runs[col] == name]
                if not sub.empty:
                    break
        reused = set()
        if parents is not None and not parents.empty and REUSED in parents:
            mine = parents[(parents["run_id"] == name) | (parents.get(
                "tag:sr_ablate.sweep_id", pd.Series(index=parents.index, dtype=str)) == name)]
            for text in mine[REUSED].dropna():
                reused |= set(text.split())
        if reused:
            sub = pd.concat([sub, runs[runs["run_id"].isin(reused - set(sub["run_id"]))]])
    return sub


REUSED = "tag:sr_ablate.reused_run_ids"


def expected_variants(definitions: list[str]) -> list[dict]:
    """The variants sweep files asked for: ``{variant: name}`` per named variant, else one
    ``{key: value}`` per grid combination (seeds left out: they are repeats)."""
    out = []
    for spec in map(_yaml, definitions):
        if not isinstance(spec, dict):
            continue
        if isinstance(spec.get("variants"), dict):
            out += [{"variant": v} for v in spec["variants"]]
        elif isinstance(spec.get("grid"), dict):
            grid = {k: v for k, v in spec["grid"].items() if k not in REPEATS}
            out += [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    return [dict(t) for t in dict.fromkeys(tuple(e.items()) for e in out)]


def failures_of(parents: pd.DataFrame, runs: pd.DataFrame, name: str) -> list:
    """[job overrides, error] of the failed jobs recorded on the parent runs of the sweeps of
    ``runs``, of experiment ``name`` or of sweep ``name`` (a relaunch that only reused runs
    and failed again has no runs of its own), oldest sweep first."""
    ids = set(runs.get("tag:sr_ablate.sweep_id", pd.Series(dtype=str)).dropna())
    col = "tag:sr_ablate.failed_jobs"
    if parents.empty or col not in parents:
        return []
    sweep = parents["tag:sr_ablate.sweep_id"]
    mine = parents[sweep.isin(ids) | (sweep == name) | (parents["run_id"] == name)
                   | (parents["experiment"] == name)].sort_values("start_time")
    return [f for text in mine[col].dropna() for f in json.loads(text)]


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
