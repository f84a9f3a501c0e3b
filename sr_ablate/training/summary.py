"""What a run and a sweep say when they end (stdout): one line per run, one table per sweep.

Pure formatting of the final metrics as ``run()`` returns them (``<set>/psnr`` and
``<set>/bicubic_psnr`` for every evaluation set and scale: ``val``, ``set5``, ``val_x3``...),
so it is tested without training. Bicubic upsampling is the floor every SR model has to
clear; a model under it is said to be, in words, wherever its PSNR is shown.
"""
from __future__ import annotations

HINT = "look next: mlflow ui, sr-ablate report"
STATUS = {"ran": "ran", "skipped": "skipped-reused", "failed": "failed",
          "interrupted": "interrupted"}


def psnr_by_set(metrics: dict) -> list[tuple[str, float, float | None]]:
    """(set, PSNR in dB, bicubic PSNR or None) for every set in ``metrics``, in its order."""
    out = []
    for key, value in metrics.items():
        name, _, metric = key.rpartition("/")
        if metric == "psnr":
            out.append((name, float(value), metrics.get(f"{name}/bicubic_psnr")))
    return out


def _against_bicubic(name: str, psnr: float, bicubic: float | None) -> str:
    if bicubic is None:
        return f"{name} {psnr:.2f} dB"
    text = f"{name} {psnr:.2f} dB vs bicubic {bicubic:.2f} ({psnr - bicubic:+.2f})"
    return f"{text}: below bicubic" if psnr < bicubic else text


def run_line(run_id: str, metrics: dict, hint: bool = True) -> str:
    """The line a run ends with, e.g. ``sr_ablate: run <id> finished: val 32.37 dB vs bicubic
    32.93 (-0.56): below bicubic; set5 34.70 dB vs bicubic 33.68 (+1.02); look next: mlflow
    ui, sr-ablate report``. ``hint=False`` (a sweep's job: its sweep ends with a table) drops the
    last part."""
    parts = [_against_bicubic(*s) for s in psnr_by_set(metrics)] or ["no PSNR logged"]
    return f"sr_ablate: run {run_id} finished: " + "; ".join(parts) + (f"; {HINT}" if hint else "")


def budget_notice(trainer) -> str | None:
    """The line a run or sweep on ``trainer=quick`` starts with (None for other budgets): a
    budget that checks the pipeline must not be read as a study's result. It says only what
    is known at the start (the budget; overrides may change how far a model gets): the run's
    last line says how it came out against bicubic."""
    if trainer.name != "quick":
        return None
    return (f"sr_ablate: trainer=quick is a short budget ({trainer.steps} steps) for checking "
            "the pipeline, not for comparing designs; the last line says how the model did "
            "against bicubic. For a study: trainer=cpu on a CPU, trainer=paper on a GPU")


def job_labels(overrides: list[list[str]]) -> list[str]:
    """What tells the jobs of a sweep apart: each one's overrides less those every job shares
    (``+study_variant=x`` shown as ``variant=x``); all of them for a lone job."""
    common = set.intersection(*map(set, overrides)) if len(overrides) > 1 else set()
    return [" ".join(o.replace("+study_variant=", "variant=") for o in job if o not in common)
            or "(defaults)" for job in overrides]


def _reason(result: dict) -> str:
    if result["outcome"] == "skipped":
        return "(same config hash: this FINISHED run is reused)"
    if result["outcome"] in ("failed", "interrupted"):
        return f"({' '.join(str(result.get('message', '')).split())[:160]})"
    return ""


def sweep_table(results: list[dict], sweep_id: str = "") -> str:
    """The table a grid sweep ends with: one row per job, in job order: its overrides, how it
    ended (ran, skipped-reused, failed, interrupted), PSNR on ``val`` (else its first set),
    Δ against bicubic, its run id, and why it was skipped, failed or stopped. ``results``: the
    jobs' outcomes (``launch.record``)."""
    results = sorted(results, key=lambda r: r.get("num", 0))
    labels = job_labels([r.get("overrides") or r["job"].split() for r in results])
    rows = [("job", "status", "PSNR dB", "vs bicubic", "run id", "")]
    for label, r in zip(labels, results):
        sets = psnr_by_set(r.get("metrics") or {})
        first = next((s for s in sets if s[0] == "val"), sets[0] if sets else None)
        psnr = f"{first[0]} {first[1]:.2f}" if first else "-"
        delta = f"{first[1] - first[2]:+.2f}" if first and first[2] is not None else "-"
        rows.append((label, STATUS[r["outcome"]], psnr, delta, r.get("run_id") or "-",
                     _reason(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    title = f"sr_ablate: sweep {sweep_id}" if sweep_id else "sr_ablate: sweep"
    lines = [f"{title} ended, {len(results)} job(s):"]
    for row in rows:
        cells = [c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append(("  " + "  ".join(cells) + "  " + row[5]).rstrip())
    report = f"sr-ablate report {sweep_id}" if sweep_id else "sr-ablate report"
    return "\n".join(lines + [f"look next: mlflow ui, {report}"])
