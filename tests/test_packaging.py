"""The package as users install it: ``pip wheel .`` (not editable), installed into a fresh
venv, then ``sr-ablate`` run from an empty folder where the checkout is not importable.

Nothing is downloaded: the wheel is built with the setuptools already here
(``--no-build-isolation``) and installed with ``--no-deps --no-index`` into a venv that sees
this machine's packages (``--system-site-packages``: torch, Hydra, MLflow...). That machine may
hold an editable install of sr_ablate too; the venv's own copy must be the one imported.
The sources are copied first, so the build leaves no build/ or egg-info in the checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import MYNET_YAML, REPO
from mlflow.tracking import MlflowClient

# the user's own config folder and sweep file
MYNET = MYNET_YAML
STUDY = """\
study: mine
overrides: [trainer=smoke, trainer.progress=false]
variants:
  small: [model=mynet]
"""


def _shipped() -> list[str]:
    """The config and sweep files the wheel must hold, as paths inside it."""
    conf = [f"sr_ablate/resources/conf/{p.relative_to(REPO / 'conf').as_posix()}"
            for p in (REPO / "conf").rglob("*.yaml")]
    sweeps = [f"sr_ablate/resources/sweeps/{p.name}" for p in (REPO / "sweeps").glob("*.yaml")]
    return sorted(conf + sweeps)


def _sources(dest: Path) -> Path:
    """What the build reads, copied; sr_ablate/resources keeps its links to ../../conf and
    ../../sweeps, as in a checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("sr_ablate", "conf", "sweeps"):
        shutil.copytree(REPO / name, dest / name, symlinks=True, ignore=ignore)
    assert (dest / "sr_ablate" / "resources" / "conf").is_symlink()
    return dest


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 300):
    out = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{cmd}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


class Installed:
    def __init__(self, root: Path):
        self.root = root
        self.wheel: Path | None = None
        self.venv = root / "venv"
        self.bin = self.venv / "bin"

    def env(self) -> dict:
        """A user's shell with the venv activated: no PYTHONPATH, no inherited run."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
               and not k.startswith(("MLFLOW_", "SR_ABLATE_"))}
        return {**env, "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
                "VIRTUAL_ENV": str(self.venv)}

    def empty(self, name: str) -> Path:
        folder = self.root / "user" / name
        folder.mkdir(parents=True)
        return folder

    def sr_ablate(self, args: list[str], cwd: Path, timeout: float = 300):
        return subprocess.run([str(self.bin / "sr-ablate"), *args], check=False, cwd=cwd,
                              env=self.env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """``pip wheel . --no-deps`` from a copy of the sources, then the wheel installed (not
    editable) into a fresh venv."""
    inst = Installed(tmp_path_factory.mktemp("packaging"))
    src = _sources(inst.root / "src")
    dist = inst.root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-index",
          "--no-build-isolation", "-w", str(dist)], cwd=inst.root)
    (inst.wheel,) = dist.glob("sr_ablate-*.whl")
    venv.create(inst.venv, system_site_packages=True, with_pip=False)
    # the venv's python runs this machine's pip (a system site-package); --ignore-installed:
    # install into the venv whatever (editable) sr_ablate the system site-packages hold
    _run([str(inst.bin / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
          "--ignore-installed", str(inst.wheel)], cwd=inst.root, env=inst.env())
    return inst


def test_the_wheel_holds_the_config_and_sweep_files_as_files(installed):
    with zipfile.ZipFile(installed.wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
        entry_points = z.read(next(n for n in infos if n.endswith("entry_points.txt"))).decode()
        config = z.read("sr_ablate/resources/conf/config.yaml").decode()
    for name in _shipped():
        assert name in infos, name
        assert (infos[name].external_attr >> 16) & 0o170000 != 0o120000, f"{name} is a link"
    assert "sr_ablate/resources/sweeps/README.md" in infos
    assert config == (REPO / "conf" / "config.yaml").read_text()
    for package in ("core", "models", "data", "training", "tracking", "config", "sweeps",
                    "report", "cli", "bench"):
        assert f"sr_ablate/{package}/__init__.py" in infos, package
    assert "sr-ablate = sr_ablate.cli.main:main" in entry_points


def test_the_venv_imports_its_own_copy(installed):
    folder = installed.empty("import")
    code = "import sr_ablate, sr_ablate.config as c; print(sr_ablate.__file__, c.CONF_DIR)"
    out = _run([str(installed.bin / "python"), "-c", code], cwd=folder, env=installed.env())
    module, conf = map(Path, out.stdout.split())
    assert module.is_relative_to(installed.venv) and conf.is_relative_to(installed.venv)
    assert not conf.is_symlink() and (conf / "model" / "srresnet.yaml").is_file()
    assert shutil.which("sr-ablate", path=installed.env()["PATH"]) == str(
        installed.bin / "sr-ablate")


def test_help_from_an_empty_folder(installed):
    folder = installed.empty("help")
    out = installed.sr_ablate(["--help"], folder, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("sr-ablate 0.1.0: ") and "Powered by Hydra" not in text
    for group in ("model=", "trainer=", "loss=", "data=", "sweep="):
        assert f"\n  {group}" in text
    assert "srresnet*" in text and "srresnet_ablation" in text  # options and sweeps found
    conf = installed.venv / "lib"
    assert f"Config files: {conf}" in text and "site-packages/sr_ablate/resources/conf" in text
    out = subprocess.run([str(installed.bin / "python"), "-m", "sr_ablate", "--help"],
                         check=False, cwd=folder, env=installed.env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == text
    out = installed.sr_ablate(["download", "--list"], folder, timeout=120)
    assert out.returncode == 0 and "set5" in out.stdout.lower()
    assert not any(folder.iterdir())


def test_bad_input_exits_with_status_2(installed):
    """The console script exits with main()'s status."""
    folder = installed.empty("bad")
    out = installed.sr_ablate(["model.blokcs=8"], folder, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown setting 'model.blokcs'")


@pytest.mark.slow
def test_a_smoke_run_from_an_empty_folder(installed):
    folder = installed.empty("smoke")
    store = installed.root / "m.db"
    out = installed.sr_ablate(["trainer=smoke", "model.blocks=1", "model.channels=8",
                               "trainer.progress=false", f"tracking.uri=sqlite:///{store}"],
                              folder)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sr_ablate: run " in out.stdout and " finished: val " in out.stdout
    client = MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["model.channels"] == "8"


@pytest.mark.slow
def test_own_config_folder_and_sweep_file(installed):
    """``--config-dir`` and ``sweep=<path>``, relative to the user's folder."""
    folder = installed.empty("own")
    (folder / "mine" / "model").mkdir(parents=True)
    (folder / "mine" / "model" / "mynet.yaml").write_text(MYNET)
    (folder / "study.yaml").write_text(STUDY)
    out = installed.sr_ablate(["-cd", "mine", "model=mynet", "--cfg", "job"], folder,
                              timeout=120)
    assert out.returncode == 0, out.stderr
    assert "channels: 8" in out.stdout
    out = installed.sr_ablate(["--config-dir", "mine", "sweep=study.yaml"], folder)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "variant=small" in out.stdout and "1 ran" in out.stderr
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    (run,) = [r for r in runs if r.data.tags.get("sr_ablate.role") != "sweep"]
    assert run.info.status == "FINISHED" and run.data.params["model.channels"] == "8"


def test_the_sdist_holds_the_files_too(tmp_path):
    """An sdist (``python -m build --sdist`` calls the same hook) holds the config files as
    files, so a wheel built from it has them."""
    src = _sources(tmp_path / "src")
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    _run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src)
    (sdist,) = (tmp_path / "dist").glob("sr_ablate-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
    for name in _shipped():
        assert name in members and members[name].isfile(), name
