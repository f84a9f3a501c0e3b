"""``sr-ablate`` / ``python -m sr_ablate``: every command of the tool, and its own ``--help``.

    sr-ablate [overrides]             train one configuration (``cli.train``)
    sr-ablate -m key=a,b ...          a sweep; sweep=<name | file.yaml> runs a study
    sr-ablate upscale|export|evaluate|report|download|bench ...

``main`` returns the exit status (the ``sr-ablate`` console script exits with it).
"""
from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path

import yaml

from sr_ablate import UserError, __version__
from sr_ablate.config import CONF_DIR, SWEEPS_DIR, split_config_dir

COMMANDS = {
    "upscale": ("sr_ablate.cli.upscale", "upscale images, folders and video with a trained run"),
    "export": ("sr_ablate.cli.export", "export a trained run's model (ONNX) for deployment"),
    "evaluate": ("sr_ablate.cli.evaluate", "score bicubic or a trained run on any set and scale"),
    "report": ("sr_ablate.cli.report", "result tables, verdicts and plots from the MLflow runs"),
    "download": ("sr_ablate.cli.download", "fetch Set5, Set14, B100, Urban100, DIV2K (HR)"),
    "bench": ("sr_ablate.cli.bench", "measure speed on this machine -> BENCHMARKS.md"),
}
WIDTH = 100  # the help's longest line
HELP_FLAGS = ("-h", "--help", "help")


def _options(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _defaults(conf: Path) -> dict[str, str]:
    """{group: default option} from the primary config's defaults list."""
    try:
        doc = yaml.safe_load((conf / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {k: str(v) for d in doc.get("defaults") or [] if isinstance(d, dict)
            for k, v in d.items()}


def _row(name: str, items: list[str], width: int) -> list[str]:
    """``  name=   a, b, c`` wrapped at WIDTH, continuation lines under the first item."""
    lead = f"  {name:<{width}} "
    return textwrap.wrap(", ".join(items), WIDTH, initial_indent=lead,
                         subsequent_indent=" " * len(lead), break_on_hyphens=False)


def help_text(config_dir: str | Path | None = None) -> str:
    """The tool's ``--help``: what it does, the config groups and their options (those of
    ``config_dir``, the user's ``--config-dir``, included), the sweeps and the commands."""
    conf = Path(CONF_DIR)
    mine = Path(config_dir) if config_dir else None
    folders = [conf, *([mine] if mine and mine.is_dir() else [])]
    groups = sorted({d.name for f in folders for d in f.iterdir()
                     if d.is_dir() and d.name != "hydra" and not d.name.startswith((".", "_"))})
    defaults = _defaults(conf)
    rows = []
    for g in groups:
        options = sorted({o for f in folders for o in _options(f / g)})
        rows.append((f"{g}=", [f"{o}*" if defaults.get(g) == o else o for o in options]))
    rows.append(("sweep=", [*_options(SWEEPS_DIR), "or the path of your own sweep file"]))
    rows.append(("hydra/launcher=", ["joblib (parallel jobs on this machine)",
                                     "slurm (a cluster; the cluster extra)"]))
    width = max(len(name) for name, _ in rows)
    lines = [
        f"sr-ablate {__version__}: ablation studies of single-image super-resolution networks.",
        "Hydra composes the configuration, sweeps launch the runs, MLflow records them, and the",
        "report turns them into result tables with the evaluation SR papers use (Y channel,",
        "MATLAB bicubic, PSNR/SSIM per image). Runs go to sqlite:///$PWD/mlflow.db unless",
        "tracking.uri= or $MLFLOW_TRACKING_URI names another store.",
        "",
        "usage: sr-ablate [-m] [group=option ...] [key=value ...]   train one run, or sweep (-m)",
        "       sr-ablate sweep=<study | path/to/file.yaml> [overrides]   run a study's sweep file",
        "       sr-ablate --config-dir DIR [...]   also look for config options in DIR",
        "       sr-ablate <command> [--help]",
        "(python -m sr_ablate ... is the same command)",
        "",
        "The three commands:",
        "  sr-ablate -m model.blocks=8,12,16,24   a sweep: 4 runs under one MLflow parent run",
        "  mlflow ui                              browse the runs (in the folder of mlflow.db)",
        "  sr-ablate report                       reports/<experiment>/: tables, verdicts, plots",
        "",
        "Config groups (group=option; * marks the default):",
        *(line for name, items in rows for line in _row(name, items, width)),
        "",
        "Budgets: trainer=quick* (150 steps) checks the pipeline; trainer=cpu is the budget for a",
        "study on a CPU (2400 steps), trainer=paper the SRResNet paper's recipe (a GPU).",
        "resume=true continues an interrupted run (Ctrl-C, SIGTERM, a crash) from its checkpoint,",
        "in the same MLflow run; an interrupted sweep continues when you run the same command.",
        "",
        "Every key is an override (model.blocks=8, optim.lr=1e-3, trainer.steps=2400, seed=1);",
        "--cfg job prints the composed config; --hydra-help shows Hydra's own flags.",
        "--config-dir DIR (-cd DIR) adds your own config folder: DIR/model/mynet.yaml makes",
        "model=mynet, DIR/trainer/long.yaml trainer=long (a built-in option of the same name",
        "wins). Your own sweep file: sweep=path/to/study.yaml.",
        "",
        "Commands (sr-ablate <command> --help for their options):",
        "  train     the default: sr-ablate [train] [overrides], as above",
        *(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()),
        "",
        f"Config files: {conf.resolve()}",
        f"Sweep files:  {SWEEPS_DIR.resolve()}",
        *([f"Your configs: {mine.resolve()}"] if mine else []),
    ]
    return "\n".join(lines)


def _config_dir(argv: list[str]) -> str | None:
    """The ``--config-dir``/``-cd`` folder named in ``argv``, for the help (else None)."""
    try:
        return split_config_dir(argv)[1]
    except UserError:  # a flag without its folder: the help is shown all the same
        return None


def _command(name: str, argv: list[str]) -> int:
    """Run ``sr-ablate <name> argv``; argparse's exits (``--help``, bad flags) become the
    returned status."""
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.main(argv) or 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.getcwd() not in sys.path and "" not in sys.path:
        # as under ``python -m``: a model class in the user's folder (``_target_: mynets.Net``)
        # imports the same through the ``sr-ablate`` script
        sys.path.insert(0, os.getcwd())
    if argv and argv[0] in COMMANDS:
        return _command(argv[0], argv[1:])
    if argv and argv[0] == "--version":
        print(f"sr-ablate {__version__}")
        return 0
    if argv and argv[0] == "train":  # the default command, also by name
        argv = argv[1:]
    if (argv and argv[0] in HELP_FLAGS) or any(a in HELP_FLAGS[:2] for a in argv):
        print(help_text(_config_dir(argv)))
        return 0
    from sr_ablate.cli import train
    sys.argv = [sys.argv[0], *argv]
    return train.main(argv)
