"""Sweep files: every file in sweeps/ is valid, expands to one Hydra -m command, and runs
end to end at trainer=smoke (slow) with every run tagged with its study."""
from __future__ import annotations

import pytest
import yaml
from conftest import REPO, SHARED_DATA, cli, save_fake_vgg19
from mlflow.tracking import MlflowClient

from sr_ablate import UserError
from sr_ablate.config.validation import validate
from sr_ablate.sweeps import grid

SWEEPS = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))


def test_the_studies_of_the_source_projects_are_there():
    assert {"srresnet_blocks", "srresnet_ablation", "srcnn_rnn_models", "srcnn_variants",
            "vdsr_scales", "live_sr"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_every_variant_composes_and_passes_the_checks(name):
    spec = grid.load(name)
    for argv in grid.checks(spec, ["trainer=smoke"]):
        cfg = validate(argv)
        assert cfg.study == spec["study"] and cfg.tracking.experiment == spec["study"]


def test_ablation_variants_are_the_study_s_six_plus_baseline():
    spec = grid.load("srresnet_ablation")
    assert spec["baseline"] == "base" and spec["variants"]["base"] == []
    assert sorted(spec["variants"]) == sorted(["base", "blocks8", "blocks12", "blocks24",
                                               "no_global_skip", "bicubic_upsampler", "vgg54"])


def test_variant_config_puts_group_choices_in_defaults():
    doc = yaml.safe_load(grid.variant_yaml("v", ["loss=l1", "model.blocks=8", "seed=3",
                                                  "eval.sets=[val,set5]"]))
    assert doc["defaults"] == [{"override /loss": "l1"}, "_self_"]
    assert doc["model"] == {"blocks": 8} and doc["seed"] == 3 and doc["variant"] == "v"
    assert doc["eval"]["sets"] == ["val", "set5"]


@pytest.mark.parametrize("text,expected", [
    ("study: s\ngrid: {model.blocks: [1]}\ngird: 1\n", "unknown key(s) gird"),
    ("grid: {model.blocks: [1]}\n", "missing 'study: <name>'"),
    ("study: s\n", "give 'grid' or 'variants'"),
    ("study: s\nbaseline: x\nvariants: {a: []}\n", "baseline 'x' is not one of the variants"),
    ("study: s\noverrides: [eval.sets=[val,set5]]\nvariants: {a: []}\n",
     "is not valid YAML (line 2, column"),
])
def test_bad_sweep_files(tmp_path, text, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        grid.load(str(f))


def test_unknown_sweep_name_lists_the_known_ones(tmp_path):
    out = cli(["sweep=srresnet_blokcs"], tmp_path)
    assert out.returncode == 2
    assert "known sweeps:" in out.stderr and "srresnet_blocks" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_typo_inside_a_variant_fails_before_any_run(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("study: s\nvariants:\n  a: []\n  b: [model.blokcs=3]\n")
    out = cli([f"sweep={f}", "trainer=smoke"], tmp_path)
    assert out.returncode == 2 and "unknown setting 'model.blokcs'" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_runs_at_smoke_budget(tmp_path, name, monkeypatch):
    spec = grid.load(name)
    env = {}
    if "vgg54" in yaml.safe_dump(spec):
        save_fake_vgg19(tmp_path / "torch")
        env["TORCH_HOME"] = str(tmp_path / "torch")
    search = ["sweep.trials=3"] if spec.get("optuna") else []  # the search path, shortened
    if "final_sets" in yaml.safe_dump(spec):  # the standard sets, shortened to Set5
        if not (SHARED_DATA / "Set5").is_dir():
            pytest.skip(f"needs the Set5 images in {SHARED_DATA} (a user runs "
                        "python -m sr_ablate download set5)")
        env["SR_ABLATE_DATA"] = str(SHARED_DATA)
        sets = ["eval.final_sets=[set5]"]
    else:
        sets = []
    out = cli([f"sweep={name}", "trainer=smoke", "trainer.progress=false", *search, *sets],
              tmp_path, timeout=1200, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(spec["study"])
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("sr_ablate.role") != "sweep"]
    n_grid = 3 if search else 1
    for values in (spec.get("grid") or {}).values():
        n_grid *= len(values)
    assert len(children) == n_grid * max(1, len(spec.get("variants") or {}))
    for r in runs:  # or stopped on purpose: pruned by Optuna
        assert r.info.status == "FINISHED" or r.data.tags.get("optuna.state") == "PRUNED"
    for r in children:
        assert r.data.params["study"] == spec["study"]
        assert r.data.tags["sr_ablate.study"] == spec["study"]
    if spec.get("variants"):
        # every variant once per grid point (e.g. per seed)
        assert (sorted(r.data.params["variant"] for r in children)
                == sorted(list(spec["variants"]) * n_grid))


def test_a_grid_key_given_on_the_command_line_replaces_the_file_s(tmp_path):
    """`sweep=srcnn_variants seed=5,6` (the command a report prints to add seeds) runs seeds
    5 and 6, not the file's 0-4 as well (Hydra would refuse the key twice)."""
    spec = grid.load("srcnn_variants")
    argv = grid.to_argv(spec, ["seed=5,6"], tmp_path)
    assert [a for a in argv if a.startswith("seed=")] == ["seed=5,6"]
    assert "seed=0,1,2,3,4" in grid.to_argv(spec, [], tmp_path)
