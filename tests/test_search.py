"""Optuna sweeps through the real command line: a real Optuna storage (sqlite), real runs
in a real MLflow store. Pruning stops trials early, failures are counted, two worker
processes share a study, and a killed sweep resumes to the requested number of trials."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from conftest import TINY, cli, user_env
from mlflow.tracking import MlflowClient

from sr_ablate import UserError
from sr_ablate.sweeps.optuna_study import check_spec

BASE = {"study": "opt", "overrides": TINY,
        "optuna": {"trials": 2, "objectives": {"val/psnr": "maximize"},
                   "params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2,
                                           "log": True}},
                   "sampler": {"name": "random", "seed": 0}, "heartbeat": 1}}


def sweep_file(tmp_path, **optuna_changes) -> str:
    spec = yaml.safe_load(yaml.safe_dump(BASE))
    spec["optuna"].update(optuna_changes)
    path = tmp_path / "opt.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # objectives keep their order
    return f"sweep={path}"


def load(tmp_path):
    return optuna.load_study(study_name="opt", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def mlflow_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("opt")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]
    return client, [r for r in runs if r not in parents], parents


@pytest.mark.parametrize("change, message", [
    ({"trails": 3}, "unknown key(s) trails"),
    ({"objectives": {"val/psnr": "up"}}, "give one or two logged metrics"),
    ({"objectives": {"val/pnsr": "maximize"}}, "'val/pnsr' is not a metric runs log"),
    ({"params": {"seed": {"type": "int", "low": 0, "high": 9}}}, "do not search over the seed"),
    ({"params": {"optim.lr": {"type": "float", "low": 1e-4}}}, "give {type: float|int"),
    ({"objectives": {"val/psnr": "maximize", "model/ms_per_frame": "minimize"},
      "pruner": {"name": "median"}}, "cannot prune a two-objective study"),
])
def test_sweep_file_mistakes_are_named(change, message):
    spec = yaml.safe_load(yaml.safe_dump(BASE))
    spec["optuna"].update(change)
    with pytest.raises(UserError, match=None) as e:
        check_spec({**spec, "path": "opt.yaml"})
    assert message in str(e.value)


@pytest.mark.parametrize("extra, message", [
    (["sweep.storage=not a url"], "is not a database URL"),
    (["sweep.trials=0"], "sweep.trials=0 must be at least 1"),
    ([], "optuna.sampler: unknown name 'tpee'"),
    (["model.blocks=0"], "model.blocks=0 must be at least 1"),
])
def test_bad_optuna_sweep_is_one_line_and_no_run(tmp_path, extra, message):
    changes = {"sampler": {"name": "tpee"}} if not extra else {}
    out = cli([sweep_file(tmp_path, **changes), *extra], tmp_path, timeout=120)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_pruned_trials_stop_early_and_are_marked(tmp_path):
    # a threshold no PSNR reaches: every trial is pruned at its first evaluation (step 2 of 4)
    out = cli([sweep_file(tmp_path, pruner={"name": "threshold", "lower": 1000.0})], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load(tmp_path)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [2] for t in study.trials)
    client, runs, parents = mlflow_runs(tmp_path)
    assert len(runs) == 2
    for r in runs:
        assert r.info.status == "KILLED"
        assert r.data.tags["optuna.state"] == "PRUNED"
        assert r.data.tags["sr_ablate.stopped"].startswith("pruned at step 2")
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
        assert steps == [2]  # the full budget logs steps 2 and 4
    assert parents[0].info.status == "FINISHED"


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_trial_and_run_point_at_each_other_and_parent_holds_the_best(tmp_path):
    out = cli([sweep_file(tmp_path)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "optuna study opt: 2 complete" in out.stderr
    study = load(tmp_path)
    client, runs, parents = mlflow_runs(tmp_path)
    (parent,) = parents
    by_id = {r.info.run_id: r for r in runs}
    for t in study.trials:
        (run_id,) = t.user_attrs["mlflow_run_ids"]
        r = by_id[run_id]
        assert r.data.tags["optuna.trial_number"] == str(t.number)
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert float(r.data.params["optim.lr"]) == pytest.approx(t.params["optim.lr"])
        assert r.data.metrics["val/psnr"] == pytest.approx(t.value)
    # the best, found here from the runs' own logged PSNR (not by asking Optuna)
    best = max(runs, key=lambda r: r.data.metrics["val/psnr"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.best_trials"] == best.data.tags["optuna.trial_number"]
    assert parent.data.tags["optuna.best_run_ids"] == best.info.run_id
    assert parent.data.metrics["best/val/psnr"] == pytest.approx(best.data.metrics["val/psnr"])
    assert parent.data.tags["optuna.study"] == "opt"
    assert "optuna.db" in parent.data.tags["optuna.storage"]
    assert "objectives" in parent.data.tags["sr_ablate.sweep"]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    # asking for more trials resumes the same study under the same parent run
    more = cli([sweep_file(tmp_path), "sweep.trials=3"], tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(load(tmp_path).trials) == 3
    _, runs, parents = mlflow_runs(tmp_path)
    assert len(runs) == 3 and len(parents) == 1


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_failed_trials_are_counted_until_the_failure_rate(tmp_path):
    # lr=1e6 (the largest the config takes) diverges: every trial fails, the sweep stops
    path = sweep_file(tmp_path, trials=4, max_failure_rate=0.5,
                      params={"optim.lr": {"type": "categorical", "choices": [1.0e6]}})
    out = cli([path], tmp_path)
    assert out.returncode == 1
    assert "3 of 3 trials failed (more than optuna.max_failure_rate=0.5)" in out.stderr
    study = load(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert all("NonFiniteLoss" in t.user_attrs["sr_ablate.error"] for t in study.trials)
    _, runs, parents = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"] * 3
    assert parents[0].info.status == "FAILED"


@pytest.mark.slow
def test_resuming_another_definition_is_refused(tmp_path):
    assert cli([sweep_file(tmp_path, trials=1)], tmp_path).returncode == 0
    out = cli([sweep_file(tmp_path, trials=1), "model.channels=16"], tmp_path)
    assert out.returncode == 2
    assert "was started with another definition" in out.stderr


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    out = cli([sweep_file(tmp_path, trials=4), "trainer.steps=8", "sweep.workers=2"], tmp_path,
              timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load(tmp_path)
    states = [t.state.name for t in study.trials]
    # two workers asking at the same instant may both get a trial: the later one steps back
    assert states.count("COMPLETE") == 4, states
    assert all(t.user_attrs.get("sr_ablate.surplus") for t in study.trials
               if t.state.name != "COMPLETE")
    workers = {t.user_attrs["sr_ablate.worker"] for t in study.trials}
    assert len(workers) == 2, workers
    _, runs, parents = mlflow_runs(tmp_path)
    assert len(runs) == 4 and len(parents) == 1
    assert parents[0].info.status == "FINISHED"


@pytest.mark.slow
def test_killed_sweep_resumes_without_repeating_or_losing_a_trial(tmp_path):
    args = [sys.executable, "-m", "sr_ablate", sweep_file(tmp_path, trials=3),
            "trainer.steps=40", "trainer.eval_every=20", "trainer.checkpoint_every=5"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=user_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    # kill it while trial 1 runs (past its first checkpoint), after trial 0 completed
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            trials = load(tmp_path).trials
        except KeyError:  # the study is not created yet
            continue
        if [t.state.name for t in trials[:2]] == ["COMPLETE", "RUNNING"] and \
                trials[1].user_attrs.get("mlflow_run_ids") and \
                any((tmp_path / ".sr_ablate" / "checkpoints").glob("*.pt")):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = load(tmp_path).trials
    assert [t.state.name for t in before[:2]] == ["COMPLETE", "RUNNING"]
    time.sleep(2.5)  # past the grace period of two missed heartbeats

    out = cli(args[3:], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trial 1: its worker stopped answering; queued again" in out.stderr
    trials = load(tmp_path).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    assert trials[0].state.name == "COMPLETE" and trials[0].datetime_complete == \
        before[0].datetime_complete  # trial 0 was not run again
    assert trials[1].state.name == "FAIL"  # the killed one...
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"  # ...ran again, same params
    assert retry[0].params == before[1].params
    client, runs, parents = mlflow_runs(tmp_path)
    killed = client.get_run(before[1].user_attrs["mlflow_run_ids"][0])
    # the retry resumed the killed trial's run from its checkpoint: that run, now finished
    assert retry[0].user_attrs["mlflow_run_ids"] == [killed.info.run_id]
    assert killed.info.status == "FINISHED"
    assert killed.data.tags["optuna.trial_number"] == str(retry[0].number)
    assert f"resuming run {killed.info.run_id}" in out.stderr
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)  # KILLED: pruned
    steps = [m.step for m in client.get_metric_history(killed.info.run_id, "val/psnr")]
    assert sorted(steps) == [20, 40]  # each evaluation logged once
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_two_objectives_give_a_pareto_front(tmp_path):
    path = sweep_file(tmp_path, trials=3, sampler={"name": "nsga2", "seed": 0},
                      objectives={"val/psnr": "maximize", "model/ms_per_frame": "minimize"},
                      params={"model.channels": {"type": "categorical", "choices": [4, 8, 16]}})
    out = cli([path], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [t.state.name for t in load(tmp_path).trials] == ["COMPLETE"] * 3
    _, runs, (parent,) = mlflow_runs(tmp_path)
    assert len(runs) == 3
    # the Pareto front computed here from what the runs logged: a run is on it unless another
    # is at least as good on both objectives and better on one
    score = {r.info.run_id: (r.data.metrics["val/psnr"], r.data.metrics["model/ms_per_frame"])
             for r in runs}

    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and a != b
    front = [r for r in runs if not any(dominates(score[o.info.run_id], score[r.info.run_id])
                                        for o in runs)]
    front.sort(key=lambda r: int(r.data.tags["optuna.trial_number"]))
    assert front  # a finite set of points always has a non-dominated one
    # the parent names exactly those trials and their runs, in trial order
    assert parent.data.tags["optuna.best_trials"] == ",".join(
        r.data.tags["optuna.trial_number"] for r in front)
    assert parent.data.tags["optuna.best_run_ids"] == ",".join(r.info.run_id for r in front)
    for r in front:  # the ids are this sweep's runs of those trials
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["optuna.state"] == "COMPLETE"
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [0, 1, 2]
    for t in load(tmp_path).trials:  # the values Optuna was given are the runs' metrics
        (run_id,) = t.user_attrs["mlflow_run_ids"]
        assert t.values == pytest.approx(list(score[run_id]))
    # one best: its values on the parent; a front of several: no single "best/" value
    best = {k: v for k, v in parent.data.metrics.items() if k.startswith("best/")}
    if len(front) == 1:
        assert best == pytest.approx({"best/val/psnr": score[front[0].info.run_id][0],
                                      "best/model/ms_per_frame": score[front[0].info.run_id][1]})
    else:
        assert best == {}
