"""The real command line: a 2-job ``-m`` sweep under one parent run, then ``make report``;
the tool's own ``--help`` and its commands' (``cli.main``); the user's own config folder
(``--config-dir``) and sweep file, from another folder."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MYNET_YAML, REPO, TINY, cli, read_results
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from sr_ablate import UserError
from sr_ablate.cli import main as cli_main
from sr_ablate.cli import train
from sr_ablate.config import CONF_DIR, SWEEPS_DIR, validation


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    out = cli(["-m", "model.blocks=1,2", *TINY[:1], "model.channels=8", "trainer.progress=false"],
              cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd


def test_sweep_runs_sit_under_one_parent(sweep_dir):
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "model.blocks=1,2" in parent.data.tags["sr_ablate.sweep"]
    sweep_id = parent.data.tags["sr_ablate.sweep_id"]
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.tags["sr_ablate.sweep_id"] == sweep_id
    assert sorted(c.data.params["model.blocks"] for c in children) == ["1", "2"]
    # the store is in the directory the user ran from, whatever Hydra did with directories
    assert (sweep_dir / "multirun").is_dir() and not (sweep_dir / "mlruns").exists()


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_make_report_equals_mlflow_metrics(sweep_dir):
    out = subprocess.run(["make", "-f", str(REPO / "Makefile"), "report",
                          f"PYTHON={sys.executable}"], cwd=sweep_dir,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    csv_path = sweep_dir / "reports" / "sr_ablate" / "results.csv"
    md = (sweep_dir / "reports" / "sr_ablate" / "results.md").read_text()
    table = read_results(csv_path)
    assert list(table["model.blocks"]) == [1, 2]
    for col in ("model/params", "train/loss", "val/psnr", "val/ssim", "val/bicubic_psnr",
                "val/bicubic_ssim"):
        assert col in table.columns and col in md
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    for r in client.search_runs([exp.experiment_id]):
        if r.data.tags.get("sr_ablate.role") == "sweep":
            continue
        row = table[table["run_id"] == r.info.run_id[:8]].iloc[0]
        for col, value in r.data.metrics.items():
            if col in table.columns:
                assert row[col] == pytest.approx(value, rel=1e-12), col
        assert f"{r.data.metrics['val/psnr']:.2f}" in md


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_single_run_progress_bar_and_no_parent(tmp_path):
    out = cli([*TINY[:3]], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # tqdm on stderr: step counter, it/s, loss and validation PSNR
    assert "4/4" in out.stderr and "it/s" in out.stderr and "val_psnr=" in out.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    assert r.info.status == "FINISHED" and "mlflow.parentRunId" not in r.data.tags


@pytest.mark.slow
def test_a_diverging_job_fails_with_its_step_and_the_sweep_goes_on(tmp_path):
    """optim.lr=1e6 (the largest lr the config takes) makes the loss non-finite at step 2:
    that run ends FAILED with the step and reason as a tag; the other job of the sweep still
    runs and finishes."""
    out = cli(["-m", *TINY, "optim.lr=1e6,1e-4"], tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "the run ended FAILED - lower optim.lr or set trainer.grad_clip" in out.stderr
    assert "1 ran, 1 failed" in out.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    runs = {r.data.params["optim.lr"]: r for r in client.search_runs([exp.experiment_id])
            if "optim.lr" in r.data.params}
    bad, good = runs["1000000.0"], runs["0.0001"]
    assert bad.info.status == "FAILED" and good.info.status == "FINISHED"
    assert bad.data.tags["sr_ablate.error"].startswith("NonFiniteLoss: training loss is ")
    assert bad.data.tags["sr_ablate.error"].endswith(" at step 2")  # the first non-finite step


# --- the tool's own --help ------------------------------------------------------------------

GROUPS = sorted(d.name for d in Path(CONF_DIR).iterdir() if d.is_dir() and d.name != "hydra")


def help_rows(text: str) -> dict[str, list[str]]:
    """{group: its options as listed} from the help's "Config groups" block (wrapped rows
    joined)."""
    block = text.split("Config groups", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    rows: dict[str, str] = {}
    for line in block:
        if not line.startswith("   "):
            name, _, line = line.strip().partition("=")
            rows[name] = ""
        rows[name] += " " + line.strip()
    return {k: [o.strip() for o in v.split(",")] for k, v in rows.items()}


def test_help_is_the_tools_own(capsys):
    assert cli_main.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text == cli_main.help_text() + "\n"
    assert "Hydra" in text and "Powered by Hydra" not in text
    assert max(len(line) for line in text.splitlines()) <= cli_main.WIDTH
    assert "The three commands:" in text and "sr-ablate report" in text and "mlflow ui" in text
    rows = help_rows(text)
    for group in GROUPS:  # every group with every option, its default marked
        options = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        assert [o.rstrip("*") for o in rows[group]] == options
        assert sum(o.endswith("*") for o in rows[group]) == 1
    assert "srresnet*" in rows["model"] and "quick*" in rows["trainer"]
    assert rows["sweep"] == [*sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")),
                             "or the path of your own sweep file"]
    assert "hydra/launcher" in rows
    for command in ("train", *cli_main.COMMANDS):  # where evaluate/report/download live
        assert f"\n  {command} " in text
    assert "--config-dir DIR" in text


@pytest.mark.parametrize("argv", [["-h"], ["help"], ["train", "--help"],
                                  ["model=espcn", "-m", "--help"]])
def test_every_help_spelling_gives_the_tools_help(argv, capsys):
    assert cli_main.main(argv) == 0
    assert capsys.readouterr().out == cli_main.help_text() + "\n"


def test_python_m_help_is_not_hydras(tmp_path):
    for args in (["--help"], ["trainer=smoke", "--help"]):
        out = cli(args, tmp_path, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("sr-ablate ") and "Config groups" in out.stdout
        assert "Powered by Hydra" not in out.stdout
    assert not any(tmp_path.iterdir())  # no outputs/, no store


@pytest.mark.parametrize("command", sorted(cli_main.COMMANDS))
def test_each_command_has_its_help(command, capsys):
    assert cli_main.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert command in out and len(out.splitlines()) > 3
    assert "Powered by Hydra" not in out


def test_a_bad_flag_of_a_command_returns_its_status(capsys):
    assert cli_main.main(["download", "--no-such-flag"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_help_lists_the_options_of_the_users_config_folder(mine, capsys):
    assert cli_main.main(["--config-dir", str(mine), "--help"]) == 0
    text = capsys.readouterr().out
    rows = help_rows(text)
    assert "mynet" in rows["model"] and "tiny" in rows["trainer"]
    assert str(mine.resolve()) in text


# --- the user's config folder and sweep file ------------------------------------------------

MYNET = MYNET_YAML  # a model option of the user's own: SRResNet, small
TINY_TRAINER = """\
name: tiny
steps: 2
batch_size: 2
patch_size: 16
eval_every: 2
log_every: 2
progress: false
"""


@pytest.fixture
def mine(tmp_path, monkeypatch):
    """A user config folder: model=mynet, trainer=tiny, and a model/srresnet.yaml that the
    built-in option shadows. No inherited $SR_ABLATE_CONFIG_DIR."""
    monkeypatch.delenv(train.CONFIG_DIR_ENV, raising=False)
    folder = tmp_path / "mine"
    (folder / "model").mkdir(parents=True)
    (folder / "trainer").mkdir()
    (folder / "model" / "mynet.yaml").write_text(MYNET)
    (folder / "model" / "srresnet.yaml").write_text(MYNET.replace("channels: 8", "channels: 7"))
    (folder / "trainer" / "tiny.yaml").write_text(TINY_TRAINER)
    return folder


def test_config_dir_option_spellings(mine, monkeypatch):
    want = str(mine.resolve())
    for argv in (["--config-dir", str(mine), "seed=1"], [f"--config-dir={mine}", "seed=1"],
                 ["-cd", str(mine), "seed=1"], ["seed=1", "-cd", "/elsewhere", "-cd", str(mine)]):
        assert train.config_dir_option(argv) == (["seed=1"], want)
    assert train.config_dir_option(["-m", "seed=1,2"]) == (["-m", "seed=1,2"], None)
    monkeypatch.chdir(mine.parent)  # a relative folder is the user's folder, made absolute
    assert train.config_dir_option(["-cd", "mine"]) == ([], want)
    monkeypatch.setenv(train.CONFIG_DIR_ENV, "mine")  # the variable, when no flag names one
    assert train.config_dir_option(["seed=1"]) == (["seed=1"], want)
    with pytest.raises(UserError, match="--config-dir nothere: no such folder"):
        train.config_dir_option(["--config-dir", "nothere"])
    with pytest.raises(UserError, match="-cd needs a folder"):
        train.config_dir_option(["seed=1", "-cd"])


def test_a_missing_config_dir_is_one_line_and_no_run(tmp_path):
    out = cli(["--config-dir", "nothere", "trainer=smoke"], tmp_path, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: --config-dir nothere: no such folder; give a folder "
                                  "that holds config groups, e.g. DIR/model/mynet.yaml for "
                                  "model=mynet")
    assert not any(tmp_path.iterdir())


def test_the_checks_compose_with_the_users_config_folder(mine, monkeypatch, tmp_path):
    from sr_ablate.sweeps import grid

    with pytest.raises(UserError, match="model=mynet: no such option"):
        validation.validate(["model=mynet"])
    monkeypatch.setenv(train.CONFIG_DIR_ENV, str(mine))
    cfg = validation.validate(["model=mynet", "trainer=tiny"])
    assert (cfg.model.channels, cfg.model.blocks, cfg.trainer.steps) == (8, 1, 2)
    assert validation.compose([]).model.channels == 64  # the built-in srresnet wins
    with pytest.raises(UserError, match="unknown setting 'model.blokcs'"):
        validation.validate(["model=mynet", "model.blokcs=2"])
    # next to a sweep's own hydra.searchpath (its generated variants), both are searched
    variants = tmp_path / "variants" / "study_variant"
    variants.mkdir(parents=True)
    (variants / "small.yaml").write_text(grid.variant_yaml("small", ["model=mynet"]))
    cfg = validation.compose([f"hydra.searchpath=[file://{variants.parent}]",
                              "+study_variant=small", "trainer=tiny"])
    assert (cfg.model.channels, cfg.variant) == (8, "small")


@pytest.mark.parametrize("choice", ["model=mynet", "model=srresnet"])
def test_hydra_and_the_checks_compose_the_same_config(mine, monkeypatch, tmp_path, choice):
    """--cfg job prints what Hydra's own run composes (its --config-dir flag); compose() with
    the folder in $SR_ABLATE_CONFIG_DIR gives the same config."""
    out = cli(["--config-dir", str(mine), choice, "trainer=tiny", "--cfg", "job"], tmp_path,
              timeout=120)
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv(train.CONFIG_DIR_ENV, str(mine))
    composed = OmegaConf.to_container(validation.compose([choice, "trainer=tiny"]))
    assert yaml.safe_load(out.stdout) == composed
    assert composed["model"]["channels"] == (8 if choice == "model=mynet" else 64)


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_users_sweep_file_and_config_dir_from_another_folder(mine, tmp_path):
    """Relative paths, from the folder the user runs in: a sweep file of their own whose
    variant picks a model from their config folder; one MLflow run, in their folder."""
    (tmp_path / "study.yaml").write_text("study: mine\noverrides: [trainer=tiny]\n"
                                         "variants:\n  small: [model=mynet]\n")
    work = tmp_path / "work"
    work.mkdir()
    out = cli(["-cd", "../mine", "sweep=../study.yaml"], work)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "variant=small" in out.stdout and "1 ran" in out.stderr
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    (run,) = [r for r in runs if r.data.tags.get("sr_ablate.role") != "sweep"]
    assert run.info.status == "FINISHED"
    assert (run.data.params["model.channels"], run.data.params["trainer.steps"]) == ("8", "2")


def test_the_help_names_the_study_budget_and_resume(capsys):
    assert cli_main.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "trainer=cpu is the budget for a\nstudy on a CPU" in text
    assert "resume=true continues an interrupted run" in text


@pytest.mark.parametrize("command", sorted(cli_main.COMMANDS))
def test_a_commands_help_reads_as_text_not_restructuredtext(command, capsys):
    """`upscale --help` showed ``sr-ablate export`` with its double backticks."""
    assert cli_main.main([command, "--help"]) == 0
    assert "``" not in capsys.readouterr().out
