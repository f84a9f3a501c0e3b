"""Result tables from the runs in MLflow: ``python -m sr_ablate.report [experiment | sweep id ...]``.

Writes ``reports/<name>/``: ``results.{md,csv,tex}``, a self-contained ``index.html`` and the
plots in ``plots/``. One row per variant (the swept factors; runs differing only in ``seed``
are repeats and pooled): n, mean ± 95% confidence interval of PSNR and SSIM on every
evaluation set and scale, bicubic PSNR/SSIM, Δ PSNR against bicubic and against the study's
baseline variant with a paired Wilcoxon test over the same images and seeds (Holm-corrected
over the variants; ``*`` = significant at 0.05), final training loss, parameters, GFLOPs,
ms per frame and wall time. Column names are the MLflow names (``model.blocks``,
``val/psnr``), which are also the override keys. Runs evaluated under different protocols
(fingerprints) never share a table.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from sr_ablate.stats import holm, mean_ci, paired_p

COST = ["train/loss", "model/params", "model/gflops", "model/ms_per_frame",
        "model/s_per_30_frames", "wall_s"]
SET_METRICS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
WITH_CI = ("psnr", "ssim")
# Params that differ between runs without being a design choice.
NOT_FACTORS = {"tracking.uri", "tracking.experiment", "trainer.progress", "trainer.device",
               "sweep.force", "sweep.trials", "sweep.storage", "sweep.workers"}
# Params swept to repeat a configuration, not to compare designs: their runs are pooled.
REPEATS = ("seed",)
ALPHA = 0.05


def _number(value):
    """'12' -> 12, '1e-4' -> 0.0001, 'true' -> 'true': params come back from MLflow as strings."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return int(f) if f.is_integer() and "." not in str(value) and "e" not in str(value) else f


def factors(runs: pd.DataFrame) -> list[str]:
    """Swept parameters: params whose value differs between runs; keys the runs' command
    lines overrode come first, in the order typed."""
    meta = {"run_id", "status", "experiment", "start_time", "end_time"}
    varying = [c for c in runs.columns
               if c not in meta and "/" not in c and not c.startswith("tag:")
               and c not in NOT_FACTORS and c not in REPEATS
               and runs[c].astype(str).nunique(dropna=False) > 1]
    typed: list[str] = []
    for text in runs.get("tag:overrides", pd.Series(dtype=str)).fillna(""):
        for item in text.split():
            key = item.split("=", 1)[0].lstrip("+~")
            if key in varying and key not in typed:
                typed.append(key)
    return typed + [c for c in varying if c not in typed]


def eval_sets(runs: pd.DataFrame) -> list[str]:
    """Evaluation set prefixes (``val``, ``Set5``, ``val_x3``...) the runs logged, ``val`` first."""
    return sorted({c.split("/")[0] for c in runs.columns
                   if "/" in c and c.split("/", 1)[1] in SET_METRICS},
                  key=lambda n: (n != "val", n)) or ["val"]


def _sort(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if keys:
        table = table.sort_values(keys, key=lambda s: s.map(lambda v: (isinstance(v, str), v)))
    return table.reset_index(drop=True)


def results_table(runs: pd.DataFrame, baseline: dict | None = None,
                  per_image: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per variant of the FINISHED runs: ``run_id`` (short ids), the factors, ``n``,
    ``seed`` (the pooled seeds), per set ``<set>/psnr`` (mean), ``<set>/psnr_ci`` (95% half
    width), the same for SSIM, bicubic means, ``<set>/dpsnr_bicubic``; with a ``baseline``
    ({factor: value}) also ``<set>/dpsnr_baseline``, ``<set>/p_baseline`` (Wilcoxon over the
    per-image PSNR in ``per_image[run_id]``) and ``<set>/p_holm``; then the cost columns."""
    done = runs[runs["status"] == "FINISHED"].dropna(axis=1, how="all")
    keys, sets = factors(done), eval_sets(done)
    groups = list(done.groupby(keys, sort=False, dropna=False)) if keys else [((), done)]
    rows, members = [], []
    for key, g in groups:
        row = {"run_id": " ".join(g["run_id"].str[:8]), **dict(zip(keys, map(_number, key))),
               "n": len(g), "seed": ",".join(sorted(g.get("seed", pd.Series(["0"])).astype(str),
                                                    key=_number))}
        for s in sets:
            for m in SET_METRICS:
                col = f"{s}/{m}"
                values = g[col] if col in g else pd.Series(dtype=float)
                if m in WITH_CI:
                    row[col], row[f"{col}_ci"] = mean_ci(values)
                else:
                    row[col] = values.mean()
            row[f"{s}/dpsnr_bicubic"] = row[f"{s}/psnr"] - row[f"{s}/bicubic_psnr"]
        g_wall = (g["end_time"] - g["start_time"]) / 1000 if "end_time" in g else None
        for c in COST:
            row[c] = g_wall.mean() if c == "wall_s" and g_wall is not None else (
                g[c].mean() if c in g else math.nan)
        rows.append(row)
        members.append(g)
    table = pd.DataFrame(rows)
    base = _find(table, baseline) if baseline else None
    if base is not None:
        for s in sets:
            table[f"{s}/dpsnr_baseline"] = table[f"{s}/psnr"] - table.loc[base, f"{s}/psnr"]
            ps = [math.nan if i == base else _paired(members[i], members[base], s, per_image)
                  for i in range(len(table))]
            table[f"{s}/p_baseline"], table[f"{s}/p_holm"] = ps, holm(ps)
    table["baseline"] = [i == base for i in range(len(table))]
    return _sort(table, keys)


def _find(table: pd.DataFrame, baseline: dict) -> int | None:
    """Row index of the baseline variant: every {key: value} of ``baseline`` matches."""
    for i, row in table.iterrows():
        if all(k in table.columns and str(row[k]) == str(_number(v)) for k, v in
               baseline.items()):
            return i
    return None


def _paired(variant: pd.DataFrame, base: pd.DataFrame, s: str,
            per_image: dict[str, pd.DataFrame] | None) -> float:
    """Wilcoxon p-value of per-image PSNR on set ``s``: pairs are (seed, image) for the seeds
    both have, else images with PSNR averaged over seeds."""
    if not per_image:
        return math.nan

    def psnr(runs):
        out = {}
        for _, r in runs.iterrows():
            rows = per_image.get(r["run_id"])
            if rows is not None:
                rows = rows[rows["set"] == s]
                out[str(r.get("seed", "0"))] = rows.set_index("image")["psnr"]
        return out
    a, b = psnr(variant), psnr(base)
    common = sorted(set(a) & set(b))
    if common:
        pairs = [(a[k], b[k].reindex(a[k].index)) for k in common]
        x, y = pd.concat([p[0] for p in pairs]), pd.concat([p[1] for p in pairs])
    elif a and b:
        x = pd.concat(a.values(), axis=1).mean(axis=1)
        y = pd.concat(b.values(), axis=1).mean(axis=1).reindex(x.index)
    else:
        return math.nan
    ok = ~(x.isna() | y.isna())
    return paired_p(x[ok].to_numpy(), y[ok].to_numpy())


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: ``mean ± ci``, Δ with sign, p with ``*`` when significant
    after Holm, thousands separators; one column per quantity."""
    sets = [c[:-len("/psnr")] for c in table.columns if c.endswith("/psnr")
            and not c.endswith("bicubic_psnr")]
    keys = [c for c in table.columns if "/" not in c and c not in
            ("run_id", "n", "seed", "baseline", "wall_s")]
    out = pd.DataFrame({k: table[k] for k in keys})
    out["n"] = table["n"]
    if table["baseline"].any():
        out["baseline"] = table["baseline"].map(lambda b: "◆" if b else "")

    def pm(v, ci, digits):
        return "" if pd.isna(v) else f"{v:.{digits}f}" + ("" if pd.isna(ci) else
                                                           f" ± {ci:.{digits}f}")
    for s in sets:
        out[f"{s}/psnr"] = [pm(v, c, 2) for v, c in zip(table[f"{s}/psnr"],
                                                        table[f"{s}/psnr_ci"])]
        out[f"{s}/ssim"] = [pm(v, c, 4) for v, c in zip(table[f"{s}/ssim"],
                                                        table[f"{s}/ssim_ci"])]
        out[f"{s}/bicubic_psnr"] = table[f"{s}/bicubic_psnr"].map(lambda v: f"{v:.2f}")
        out[f"{s}/bicubic_ssim"] = table[f"{s}/bicubic_ssim"].map(lambda v: f"{v:.4f}")
        out[f"{s}/Δpsnr_bicubic"] = table[f"{s}/dpsnr_bicubic"].map(lambda v: f"{v:+.2f}")
        if f"{s}/dpsnr_baseline" in table:
            out[f"{s}/Δpsnr_baseline"] = table[f"{s}/dpsnr_baseline"].map(lambda v: f"{v:+.2f}")
            out[f"{s}/p"] = [("" if pd.isna(p) else f"{p:.3g}" + (" *" if h < ALPHA else ""))
                             for p, h in zip(table[f"{s}/p_baseline"], table[f"{s}/p_holm"])]
    fmt = {"train/loss": "{:.4g}", "model/params": "{:,.0f}", "model/gflops": "{:.3g}",
           "model/ms_per_frame": "{:.1f}", "model/s_per_30_frames": "{:.2f}", "wall_s": "{:.0f}"}
    for c, f in fmt.items():
        if c in table and table[c].notna().any():
            out[c] = table[c].map(lambda v, f=f: "" if pd.isna(v) else f.format(v))
    out["run_id"] = table["run_id"]
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a ``display`` table."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(row[c]) else str(row[c]) for c in cols)
                     + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """A ``tabular`` (booktabs) of a ``display`` table, ready for ``\\input``."""
    def tex(v) -> str:
        text = "" if pd.isna(v) else str(v)
        for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                     ("#", r"\#"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("◆", r"$\bullet$")):
            text = text.replace(a, b)
        return text
    cols = list(table.columns)
    lines = [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
             " & ".join(tex(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(row[c]) for c in cols) + r" \\" for _, row in table.iterrows()]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


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


def baseline_of(runs: pd.DataFrame, definitions: list[str]) -> dict | None:
    """The baseline a sweep file declares (``baseline: <variant>`` or ``{key: value}``)."""
    for text in definitions:
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        b = spec.get("baseline") if isinstance(spec, dict) else None
        if isinstance(b, str):
            return {"variant": b}
        if isinstance(b, dict):
            return b
    return None


def write(runs: pd.DataFrame, out_dir: Path, name: str, baseline: dict | None = None,
          per_image: dict | None = None, figures=None) -> pd.DataFrame:
    """Write results.{md,csv,tex} and index.html for one experiment's runs; returns the
    (first) table. ``figures(group, table, out_dir, suffix)`` may draw plots for a group and
    return their paths (relative to ``out_dir``), which both documents show.

    Runs with different evaluation fingerprints go to separate tables (``results.csv`` for
    the largest group, ``results-<fingerprint>.csv`` for the others) and the documents say why.
    """
    from sr_ablate import report_html

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = by_fingerprint(runs[runs["status"] == "FINISHED"])
    intro = ""
    if len(groups) > 1:
        intro = (f"These runs were evaluated under {len(groups)} different protocols or "
                 "evaluation sets (fingerprints), so their numbers are not comparable: one "
                 "table per fingerprint.")
    sections, first = [], None
    for i, (fp, group) in enumerate(groups):
        table = results_table(group, baseline, per_image)
        suffix = "" if i == 0 else f"-{fp}"
        table.to_csv(out_dir / f"results{suffix}.csv", index=False)
        shown = display(table)
        (out_dir / f"results{suffix}.tex").write_text(to_latex(shown))
        note = (f"Δ against the baseline ◆ ({', '.join(f'{k}={v}' for k, v in baseline.items())})"
                f"; p: paired Wilcoxon over images and seeds, * = significant after Holm "
                f"correction (α={ALPHA})." if baseline and table["baseline"].any() else "")
        text = (f"{int(table['n'].sum())} finished runs in {len(table)} variants. Protocol: "
                f"{protocol_line(group)}; PSNR/SSIM: mean ± 95% CI over seeds of each set's "
                f"per-image mean. {note}")
        images = figures(group, table, out_dir, suffix) if figures is not None else []
        sections.append({"title": f"Fingerprint {fp} (results{suffix}.csv)", "text": text,
                         "table": shown, "images": images})
        first = table if first is None else first
    if first is None:
        first = pd.DataFrame()
        first.to_csv(out_dir / "results.csv", index=False)
        sections.append({"title": "No finished runs", "text": "", "table": None, "images": []})
    md = [f"# {name}\n", intro] if intro else [f"# {name}\n"]
    for sec in sections:
        md.append(f"## {sec['title']}\n\n{sec['text']}\n")
        if sec["table"] is not None:
            md.append(to_markdown(sec["table"]))
        md += [f"![{Path(p).stem}]({p})\n" for p in sec["images"]]
    (out_dir / "results.md").write_text("\n".join(md))
    (out_dir / "index.html").write_text(report_html.page(name, intro, sections, out_dir))
    return first


def select(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """Runs of experiment ``name``, or of the sweep whose id (or parent run id) is ``name``."""
    sub = runs[runs["experiment"] == name]
    if sub.empty:
        for col in ("tag:sr_ablate.sweep_id", "tag:mlflow.parentRunId"):
            if col in runs.columns:
                sub = runs[runs[col] == name]
                if not sub.empty:
                    break
    return sub


def main(argv: list[str] | None = None) -> int:
    from sr_ablate import report_html, tracking

    ap = argparse.ArgumentParser(prog="python -m sr_ablate.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="experiment names or sweep ids (default: every "
                    "experiment with runs newer than its report)")
    ap.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI "
                    "or sqlite:///<cwd>/mlflow.db)")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    ap.add_argument("--baseline", default=None, help="baseline variant: a variant name or "
                    "key=value[,key=value] (default: the sweep file's 'baseline')")
    args = ap.parse_args(argv)
    uri = tracking.store_uri(args.uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"error: no MLflow store at {uri}; run `python -m sr_ablate` first or pass --uri",
              file=sys.stderr)
        return 2
    runs = tracking.runs_frame(uri)
    if runs.empty:
        print(f"error: no runs in {uri}; run `python -m sr_ablate` first", file=sys.stderr)
        return 2
    names = args.names or sorted(runs["experiment"].unique())
    for name in names:
        sub = select(runs, name)
        if sub.empty:
            print(f"error: {name!r} is neither an experiment nor a sweep id; experiments: "
                  f"{', '.join(sorted(runs['experiment'].unique()))}", file=sys.stderr)
            return 2
        out = Path(args.out) / name
        stamp = str(sub["end_time"].max())
        if not args.names and (out / ".runs").is_file() and (out / ".runs").read_text() == stamp:
            print(f"{out}: up to date")
            continue
        baseline = _parse_baseline(args.baseline) or baseline_of(sub, [
            tracking.sweep_definition(uri, s) or "" for s in
            sub.get("tag:sr_ablate.sweep_id", pd.Series(dtype=str)).dropna().unique()])
        with tempfile.TemporaryDirectory() as tmp:
            per_image = report_html.fetch_per_image(uri, sub, Path(tmp))
            write(sub, out, name, baseline, per_image,
                  figures=lambda g, t, d, s: report_html.figures(uri, g, t, d, s))
        (out / ".runs").write_text(stamp)
        print(f"{out / 'results.md'}\n{(out / 'results.md').read_text()}")
    return 0


def _parse_baseline(text: str | None) -> dict | None:
    if not text:
        return None
    if "=" not in text:
        return {"variant": text}
    return dict(item.split("=", 1) for item in text.split(","))


if __name__ == "__main__":
    sys.exit(main())
