"""The GPU check's dry run stays runnable: ``scripts/gpu_check.sh OUT --device cpu --quick``
writes every file the real check writes, each step with status 0; a failing step is recorded
and the next one still runs."""
from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
from conftest import REPO, SHARED_DATA, user_env

from sr_ablate.bench.gpu_check import QUICK, Check, run_logged

STEPS = ["env", "tests", "bench", "sampling", "train"]


def statuses(summary: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in summary.splitlines()
            if line.strip() and not line.startswith("#")}


@pytest.mark.slow  # about 3 minutes on 2 cores: every step, the CUDA tests on the CPU included
@pytest.mark.skipif(not (SHARED_DATA / "T91").is_dir(), reason="needs ../shared/data (T91, Set5, "
                    "Set14)")
def test_the_cpu_dry_run_writes_every_file_with_every_step_at_status_0(tmp_path):
    out = tmp_path / "check"
    t = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--device",
                           "cpu", "--quick"], cwd=tmp_path, env=user_env(), capture_output=True,
                          text=True, timeout=1200)
    print(f"dry run: {time.monotonic() - t:.0f} s\n{done.stdout}")
    summary = (out / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stderr[-3000:]
    assert statuses(summary) == dict.fromkeys(STEPS, "0"), summary
    assert "torch 2" in (out / "env.txt").read_text()
    suite = ET.parse(out / "tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 10 and suite.get("failures") == suite.get("errors") == "0"
    assert " passed" in (out / "tests.log").read_text()
    bench = (out / "bench.md").read_text()
    assert "| SRResNet-16 | fp32 |" in bench and "| SRResNet-16 | bf16 |" in bench
    assert "matmul peak measured: fp32" in bench and "ESPCN x1.5, 1280x720 -> 1920x1080" in bench
    assert "steps/s" in (out / "sampling.md").read_text()
    results = (out / "results.md").read_text()
    assert "| set5 |" in results and "| set14 |" in results and "(FINISHED)" in results


def test_a_failing_step_is_recorded_and_the_checks_after_it_run(tmp_path):
    check = Check(tmp_path, "cpu", QUICK, None, quick=True)
    check.step("first", ["a.txt"], lambda: (3, "went wrong"))
    check.step("second", [], lambda: 1 / 0)  # a bug in a step: its traceback in second.log
    check.step("third", ["c.txt"], lambda: (0, None))
    summary = (tmp_path / "summary.txt").read_text()
    assert statuses(summary) == {"first": "3", "second": "1", "third": "0"}
    assert "went wrong" in summary and "2 of 3 steps failed" in summary
    assert "ZeroDivisionError" in (tmp_path / "second.log").read_text()
    assert check.summary() == 2
    assert check.sampling()[0] == 1 and check.train()[0] == 1  # no data folder: said, not run


def test_a_step_past_its_timeout_is_stopped_with_124(tmp_path):
    log = tmp_path / "slow.log"
    t = time.monotonic()
    assert run_logged([sys.executable, "-c", "import time; time.sleep(60)"], log, 1) == 124
    assert time.monotonic() - t < 30 and "stopped after 1 s" in log.read_text()
    assert run_logged([sys.executable, "-c", "raise SystemExit(5)"], log, 30) == 5
