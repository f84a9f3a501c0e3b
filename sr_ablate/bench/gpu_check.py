"""The GPU check in one command: ``scripts/gpu_check.sh OUT [--device cpu] [--quick]``.

Five steps, each run whatever the ones before it did; every figure and log goes into OUT and
each step's exit status into ``OUT/summary.txt`` (written after every step, so a check cut
short still says how far it got). Figures are recorded, never asserted.

  env       nvidia-smi, torch / CUDA / cuDNN versions, the GPU             -> env.txt
  tests     ``pytest -m cuda`` (tests/test_cuda.py) on the device          -> tests.log, tests.xml
  bench     ``sr_ablate bench``: bare loop vs sr_ablate, SRResNet-16 batch 16 x 48², fp32
            and bf16, against the measured matmul peaks; live ESPCN x1.5 720p -> 1080p
                                                                           -> bench.md, bench.log
  sampling  two short training runs, ``data.on_device=false`` / ``true``: steps/s
                                                                           -> sampling.md
  train     SRResNet-16 x2 on T91 (batch 16 x 32² LR) for about 5 minutes (bf16, Adam 1e-3,
            cosine), Set5 / Set14 against bicubic                    -> results.md, train.log

Runs go to ``sqlite:///OUT/mlflow.db`` (artifacts in OUT/mlartifacts). ``--quick`` makes every
step tiny: the CPU dry run (``--device cpu --quick``) takes a few minutes on 2 cores.
The images (T91, Set5, Set14) are found in ``--data``, ``$SR_ABLATE_DATA``, ``../shared/data``
or ``shared/data`` (beside or inside the repository), the first that holds all three.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from sr_ablate.bench import gpu_results

REPO = Path(__file__).resolve().parents[2]
SETS = ("T91", "Set5", "Set14")


@dataclass(frozen=True)
class Plan:
    """How large each step is. ``model``: the overrides the sampling and training runs share;
    ``train_seconds``: the training step's whole wall time (start, steps, evaluation);
    ``overhead``: its seconds besides the steps; ``budget``: the whole check's seconds (the
    training step gets what is left of it, if that is less)."""
    bench: tuple[str, ...]
    model: tuple[str, ...]
    sampling_steps: int
    log_every: int
    train_seconds: float
    overhead: float
    budget: float
    timeout: float  # of every step but training


# LR patches of 32 px for the T91 runs (48 in the bench, on the built-in photographs): T91's
# smallest image, t20.png, is 78 px high, 39 LR pixels at x2. The dry run uses the same size,
# so that it finds a patch the images cannot give.
FULL = Plan(
    bench=("--batch", "16", "--patch", "48", "--seconds", "2", "--rounds", "3",
           "--frames", "30"),
    model=("trainer.batch_size=16", "trainer.patch_size=32", "trainer.channels_last=auto"),
    sampling_steps=600, log_every=100, train_seconds=300, overhead=60, budget=480, timeout=180)
QUICK = Plan(
    bench=("--batch", "4", "--patch", "24", "--steps", "2", "--rounds", "1", "--frames", "1"),
    model=("model.blocks=2", "model.channels=16", "trainer.batch_size=4",
           "trainer.patch_size=32", "trainer.channels_last=false"),
    sampling_steps=30, log_every=10, train_seconds=60, overhead=45, budget=600, timeout=600)


def find_data(given: str | None) -> Path | None:
    """The first folder holding T91, Set5 and Set14: ``given``, $SR_ABLATE_DATA, then
    shared/data beside the repository and inside it."""
    for place in (given, os.environ.get("SR_ABLATE_DATA"), REPO.parent / "shared" / "data",
                  REPO / "shared" / "data"):
        if place and all((Path(place) / s).is_dir() for s in SETS):
            return Path(place).resolve()
    return None


def run_logged(cmd: list[str], log: Path, timeout: float, cwd: Path = REPO,
               env: dict | None = None) -> int:
    """``cmd`` with stdout and stderr into ``log`` (appended, after the command line); its
    exit status, 124 when it ran past ``timeout`` (its whole process group is stopped)."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items()
           if not k.startswith("MLFLOW_")}  # runs say where they log: no inherited run
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            f.write(f"\ngpu_check: stopped after {timeout:.0f} s\n")
            return 124


class Check:
    """The steps, their statuses and ``summary.txt``."""

    def __init__(self, out: Path, device: str, plan: Plan, data: Path | None, quick: bool):
        self.out, self.device, self.plan, self.data = out, device, plan, data
        self.mode = "quick" if quick else "full"
        self.started, self.rows = time.monotonic(), []
        self.uri = f"sqlite:///{out / 'mlflow.db'}"
        self.rate: float | None = None  # steps/s of the sampling runs, for the training
        self.on_device: str | None = None  # the faster data.on_device
        self.head = (f"# gpu_check --device {device} ({self.mode}), "
                     f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}, data {data}")

    def step(self, name: str, files: list[str], fn) -> None:
        t = time.monotonic()
        try:
            status, note = fn()
        except Exception:
            with open(self.out / f"{name}.log", "a") as f:
                f.write(traceback.format_exc())
            status, note = 1, f"error, see {name}.log"
        self.rows.append((name, status, time.monotonic() - t, " ".join(files), note or ""))
        print(f"gpu_check: {name}: status {status} ({time.monotonic() - t:.0f} s) {note or ''}",
              file=sys.stderr, flush=True)
        self.summary()

    def summary(self) -> int:
        failed = sum(1 for r in self.rows if r[1] != 0)
        lines = [self.head, "# step      status  seconds  files  note"]
        lines += [f"{n:<11} {s:<7} {sec:<8.1f} {files}  {note}".rstrip()
                  for n, s, sec, files, note in self.rows]
        lines.append(f"# {failed} of {len(self.rows)} steps failed; "
                     f"{time.monotonic() - self.started:.0f} s in all")
        (self.out / "summary.txt").write_text("\n".join(lines) + "\n")
        return failed

    # ------------------------------------------------------------------ the steps
    def env(self):
        log = self.out / "env.txt"
        log.write_text("")
        try:
            run_logged(["nvidia-smi"], log, 60)
        except FileNotFoundError:
            log.write_text("$ nvidia-smi\nnot on this machine\n")
        code = ("from sr_ablate.bench.gpu_results import environment; "
                f"raise SystemExit(environment({self.device!r}))")
        return run_logged([sys.executable, "-c", code], log, 120), None

    def tests(self):
        if not (REPO / "tests" / "test_cuda.py").is_file():
            return 1, f"no tests/test_cuda.py under {REPO} (a checkout is needed)"
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
               f"--junitxml={self.out / 'tests.xml'}"]
        return run_logged(cmd, self.out / "tests.log", self.plan.timeout,
                          env={"SR_ABLATE_TEST_DEVICE": self.device}), None

    def bench(self):
        cmd = [sys.executable, "-m", "sr_ablate", "bench", "--device", self.device,
               "--models", "SRResNet-16", "--precisions", "fp32", "bf16", "--only", "train",
               "live", "--no-lightning", "--no-knobs", "--md", str(self.out / "bench.md"),
               *self.plan.bench]
        return run_logged(cmd, self.out / "bench.log", self.plan.timeout), None

    def train_args(self, experiment: str, steps: int, eval_every: int) -> list[str]:
        """A training run on the T91 images (the last 2 held out for validation)."""
        return ["trainer=paper", "sched=cosine", "optim.lr=1e-3", "trainer.precision=bf16",
                *self.plan.model, f"trainer.device={self.device}", "trainer.progress=false",
                f"trainer.steps={steps}", f"trainer.log_every={self.plan.log_every}",
                f"trainer.eval_every={eval_every}", "data=folder",
                f"data.root={self.data / 'T91'}", f"eval.root={self.data}",
                f"tracking.uri={self.uri}", f"tracking.experiment={experiment}"]

    def sampling(self):
        if self.data is None:
            return 1, f"no folder holding {', '.join(SETS)}: pass --data DIR"
        rates, status = {}, 0
        for value in ("false", "true"):
            name = f"sampling-{value}"
            args = self.train_args(f"gpu_check_{name}", self.plan.sampling_steps, 0)
            args += ["tracking.checkpoint=false", f"data.on_device={value}"]
            code = run_logged([sys.executable, "-m", "sr_ablate", *args],
                              self.out / f"{name}.log", self.plan.timeout, cwd=self.out,
                              env={"SR_ABLATE_CACHE": str(self.out / "cache")})
            status = status or code
            if code == 0:
                rates[value] = gpu_results.steps_per_s(self.uri, f"gpu_check_{name}")
        (self.out / "sampling.md").write_text(gpu_results.sampling_md(rates, self.device))
        if rates:
            self.on_device = max(rates, key=rates.get)
            self.rate = rates[self.on_device]
        return status, None

    def train(self):
        if self.data is None:
            return 1, f"no folder holding {', '.join(SETS)}: pass --data DIR"
        p = self.plan
        left = p.budget - (time.monotonic() - self.started)
        seconds = max(10.0, min(p.train_seconds, left) - p.overhead)
        rate = self.rate or 1.0  # the sampling step failed: a guess, said in results.md
        steps = max(2 * p.log_every, int(rate * seconds) // p.log_every * p.log_every)
        eval_every = max(p.log_every, steps // 4 // p.log_every * p.log_every)
        args = [*self.train_args("gpu_check_train", steps, eval_every),
                "eval.final_sets=[set5,set14]",
                *([f"data.on_device={self.on_device}"] if self.on_device else [])]
        t = time.monotonic()
        status = run_logged([sys.executable, "-m", "sr_ablate", *args], self.out / "train.log",
                            seconds + p.overhead + 120, cwd=self.out,
                            env={"SR_ABLATE_CACHE": str(self.out / "cache")})
        why = (f"{steps} steps: {seconds:.0f} s of steps at {rate:.2f} steps/s "
               f"({'measured by the sampling runs' if self.rate else 'a guess: no sampling rate'})")
        (self.out / "results.md").write_text(gpu_results.results_md(
            self.uri, "gpu_check_train", why, time.monotonic() - t, args) if status == 0 else
            f"# GPU check: training run\n\nExit status {status}: see train.log ({why}).\n")
        return status, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for every figure and log (made if missing)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu: the dry run")
    ap.add_argument("--quick", action="store_true", help="every step tiny (the CPU dry run)")
    ap.add_argument("--data", help="folder holding T91, Set5 and Set14")
    ap.add_argument("--budget", type=float, help="seconds for the whole check (full: 480)")
    ap.add_argument("--train-seconds", type=float, help="the training step's seconds (300)")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = Plan(**{**plan.__dict__, **{k: v for k, v in (
        ("budget", args.budget), ("train_seconds", args.train_seconds)) if v is not None}})
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.device, plan, find_data(args.data), args.quick)
    check.step("env", ["env.txt"], check.env)
    check.step("tests", ["tests.log", "tests.xml"], check.tests)
    check.step("bench", ["bench.md", "bench.log"], check.bench)
    check.step("sampling", ["sampling.md", "sampling-*.log"], check.sampling)
    check.step("train", ["results.md", "train.log"], check.train)
    failed = check.summary()
    print((out / "summary.txt").read_text(), end="")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
