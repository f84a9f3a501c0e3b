"""Speed knobs and fixed-cost timing: bf16/fp16 autocast trains as fp32 does, channels_last and
compile keep the results, the first-step time is logged, and the benchmark command runs end
to end."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time

import pytest
import torch
from conftest import SHARED_DATA, TINY, cli

from sr_ablate import UserError, data, tracking
from sr_ablate.config.checks import check
from sr_ablate.config.validation import compose as compose_cfg
from sr_ablate.core.evaluate import Evaluator, Protocol, super_resolve
from sr_ablate.models import SRResNet
from sr_ablate.training import checkpoint, clock, speed
from sr_ablate.training.job import run_job
from sr_ablate.training.loop import Every, Interrupted, fit
from sr_ablate.training.step import Numerics

QUIET = TINY + ["tracking.checkpoint=false"]


def photo_crops(seed: int, n: int = 4, size: int = 24) -> dict:
    """``n`` random ``size``² crops of a built-in training photograph (GT) and their 2x2 means
    (LQ), in [0, 1]: natural image content a small SR net can learn within a few dozen steps."""
    img = data.read_image(data.builtin_dir() / data.BUILTIN_TRAIN[0]).float() / 255
    g = torch.Generator().manual_seed(seed)
    ys = torch.randint(0, img.shape[1] - size, (n,), generator=g).tolist()
    xs = torch.randint(0, img.shape[2] - size, (n,), generator=g).tolist()
    gt = torch.stack([img[:, y:y + size, x:x + size] for y, x in zip(ys, xs)])
    return {"lq": torch.nn.functional.avg_pool2d(gt, 2), "gt": gt}


def photo_batches():
    seed = 0
    while True:
        yield photo_crops(seed)
        seed += 1


STEPS, LR = 60, 3e-3  # measured (fp32, bf16 and fp16 alike): held-out MSE 0.353 -> 0.0125


def train_small_srresnet(autocast):
    """A 1-block, 8-channel SRResNet (no BN) trained STEPS Adam steps on photo crops under
    ``autocast``; returns (held-out MSE before, after, the dtypes its convolutions and its
    output had in each training forward). The held-out batch is scored in fp32."""
    torch.manual_seed(0)
    model = SRResNet(channels=8, blocks=1, bn=False)
    held = photo_crops(10**6, n=16)

    def mse():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(held["lq"]), held["gt"]).item()
    seen = []
    hooks = [model.head[0].register_forward_hook(lambda m, i, o: seen.append(("head", o.dtype))),
             model.register_forward_hook(lambda m, i, o: seen.append(("out", o.dtype)))]
    before = mse()
    seen.clear()
    fit(model, photo_batches(), torch.optim.Adam(model.parameters(), LR), torch.nn.MSELoss(),
        steps=STEPS, every=Every(log=STEPS), progress=False,
        numerics=Numerics(autocast=autocast))
    for h in hooks:
        h.remove()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights fp32
    return before, mse(), seen


@pytest.fixture(scope="module")
def trained_fp32():
    return train_small_srresnet(None)


def test_fp32_training_of_the_small_net_lowers_the_loss_tenfold(trained_fp32):
    """The reference the reduced precisions are held to: 60 steps cut the held-out MSE by
    more than 10x (measured: 28x) and to under a quarter of the best constant's (measured:
    an eighth); an untrained net would stay at its initial MSE."""
    before, after, seen = trained_fp32
    held = photo_crops(10**6, n=16)["gt"]
    constant = torch.nn.functional.mse_loss(held.mean((0, 2, 3), keepdim=True).expand_as(held),
                                            held).item()
    assert after <= 0.1 * before and after <= 0.25 * constant
    assert seen == [("head", torch.float32), ("out", torch.float32)] * STEPS


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_trains_like_fp32(trained_fp32, dtype):
    """Every training forward runs in ``dtype`` (convolutions and output), and the same 60
    steps cut the held-out MSE tenfold as in fp32, ending within 15% of fp32's (measured: 0.3%
    for bf16). A reduced-precision path that did not train (no step, lost updates) stays near
    the initial MSE; one that silently ran in fp32 shows float32 in the hooks."""
    before, after, seen = train_small_srresnet(dtype)
    assert seen == [("head", dtype), ("out", dtype)] * STEPS
    assert before == trained_fp32[0]  # same initial weights
    assert after <= 0.1 * before
    assert after == pytest.approx(trained_fp32[1], rel=0.15)


def test_first_log_holds_time_to_first_step(store, compose, tmp_path):
    started = time.time() - 30  # as if the job had started 30 s ago
    run_job(compose(QUIET), cwd=str(tmp_path), started_at=started)
    (r,) = tracking.runs_frame(store).itertuples()
    hist = tracking.metric_history(store, r.run_id, "time/to_first_step_s")
    assert len(hist) == 1 and hist[0][0] == 2  # logged once, with the first log (step 2)
    assert 30 < hist[0][1] < 30 + (time.time() - started - 30)


def test_job_clock_counts_from_process_start_then_from_each_job(monkeypatch):
    age = time.time() - clock.process_start()
    assert 0 < age < time.monotonic() + 1  # started before now, not before the machine booted
    monkeypatch.setattr(clock, "_jobs_in_process", 0)  # as in a fresh process; restored after
    assert clock.job_clock() == pytest.approx(clock.process_start(), abs=0.05)
    assert clock._jobs_in_process == 1
    assert clock.job_clock() == pytest.approx(time.time(), abs=0.05)
    assert clock._jobs_in_process == 2


# Long enough to train (the smoke budget's 4 steps at lr 1e-4 leave PSNR where it started);
# no BN, whose running statistics after a few steps of batch 2 make val PSNR jump around.
TRAINS = QUIET + ["model.bn=false", "trainer.steps=60", "trainer.eval_every=30",
                  "trainer.log_every=5", "optim.lr=0.003", "trainer.precision=fp32",
                  "trainer.channels_last=false"]  # the reference: each knob changes one


@pytest.fixture(scope="module")
def knob_runs(tmp_path_factory):
    """The same 60-step run at fp32, channels_last and bf16, in one store: (uri, the run
    results by knob)."""
    cwd = tmp_path_factory.mktemp("knobs")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SR_ABLATE_PARENT_RUN_ID",
                    "SR_ABLATE_SWEEP_ID"):
            mp.delenv(var, raising=False)
        for knob in ("trainer.precision=fp32", "trainer.channels_last=true",
                     "trainer.precision=bf16"):  # the last of an override wins
            ids = []
            out[knob] = run_job(compose_cfg(TRAINS + [knob]), cwd=str(cwd), on_start=ids.append)
            (out[knob]["run_id"],) = ids
    return f"sqlite:///{cwd / 'mlflow.db'}", out


def psnr_rise_and_loss_fall(uri, run_id):
    """(val PSNR at the last evaluation - at the first, last logged train loss / first)."""
    psnr = tracking.metric_history(uri, run_id, "val/psnr")
    loss = tracking.metric_history(uri, run_id, "train/loss")
    assert [s for s, _ in psnr] == [30, 60] and [s for s, _ in loss] == list(range(5, 61, 5))
    return psnr[-1][1] - psnr[0][1], loss[-1][1] / loss[0][1]


def test_fp32_reference_run_trains(knob_runs):
    """What the knobs are compared against moves: val PSNR rises over 3 dB from step 30 to 60
    (measured 5.4) and the train loss falls under a quarter (measured 0.09)."""
    uri, out = knob_runs
    rise, fall = psnr_rise_and_loss_fall(uri, out["trainer.precision=fp32"]["run_id"])
    assert rise > 3 and fall < 0.25


def test_channels_last_keeps_the_result(knob_runs):
    uri, out = knob_runs
    base, other = out["trainer.precision=fp32"], out["trainer.channels_last=true"]
    assert other["val/psnr"] == pytest.approx(base["val/psnr"], abs=0.02)
    frame = tracking.runs_frame(uri).set_index("run_id")
    assert frame.loc[other["run_id"], "trainer.channels_last"] == "True"
    assert frame.loc[base["run_id"], "trainer.channels_last"] == "False"
    assert frame.loc[other["run_id"], "tag:sr_ablate.channels_last"] == "true"
    assert frame.loc[base["run_id"], "tag:sr_ablate.channels_last"] == "false"


def test_bf16_run_trains_as_fp32_does(knob_runs):
    """The bf16 run learns as the fp32 one does (PSNR up over 3 dB from step 30 to 60, train
    loss under a quarter), and ends within 1 dB of it: a fifth of what those 30 steps added
    (measured: 0.47 dB apart). A bf16 run that did not train stays at the untrained net's
    ~7 dB, 19 dB below fp32's."""
    uri, out = knob_runs
    base, other = out["trainer.precision=fp32"], out["trainer.precision=bf16"]
    rise, fall = psnr_rise_and_loss_fall(uri, other["run_id"])
    assert rise > 3 and fall < 0.25
    assert other["val/psnr"] == pytest.approx(base["val/psnr"], abs=1.0)
    frame = tracking.runs_frame(uri).set_index("run_id")
    assert frame.loc[other["run_id"], "trainer.precision"] == "bf16"
    assert frame.loc[base["run_id"], "trainer.precision"] == "fp32"


@pytest.mark.slow
def test_compile_keeps_the_result(store, compose, tmp_path):
    base = run_job(compose(QUIET), cwd=str(tmp_path))
    compiled = run_job(compose(QUIET + ["trainer.compile=true"]), cwd=str(tmp_path))
    assert compiled["val/psnr"] == pytest.approx(base["val/psnr"], abs=0.02)


def test_unknown_precision_is_refused_in_one_line(compose):
    with pytest.raises(UserError, match=r"trainer.precision='fp8' is not valid; use one of: "
                                        r"auto, fp32, bf16, fp16"):
        check(compose(QUIET + ["trainer.precision=fp8"]))
    with pytest.raises(UserError, match=r"trainer.channels_last='maybe' is not valid; use one "
                                        r"of: auto, true, false"):
        check(compose(QUIET + ["trainer.channels_last=maybe"]))


@pytest.mark.cuda  # run by scripts/gpu_check.sh (pytest -m cuda)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pairs_degraded_on_the_gpu_match_the_cpu():
    images = data.load_images([data.builtin_dir() / "chelsea.png"], 2, "rgb")
    cpu = data.make_pairs(images, 2)
    gpu = data.make_pairs(images, 2, device="cuda")
    assert gpu[0].lq.device.type == "cpu"
    assert (cpu[0].lq.int() - gpu[0].lq.int()).abs().max() <= 1


@pytest.mark.slow
def test_bench_command_prints_every_section_and_writes_markdown(tmp_path):
    from sr_ablate.cli import bench
    here, other = (bench.markers(k) for k in (bench.machine_kind(torch.device("cpu")),
                                               "GPU: another machine"))
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# notes kept\n{here[0]}\nold\n{here[1]}\nmiddle kept\n"
                  f"{other[0]}\nthe GPU's figures\n{other[1]}\ntail kept\n")
    out = cli(["--models", "ESPCN", "--rounds", "1", "--steps", "2", "--no-knobs",
               "--frames", "1", "--only", "train", "eval", "live", "--md", str(md)],
              cwd=tmp_path, command="bench", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "| ESPCN | fp32 | 64 x 32² | 2 |" in text and "GFLOP/s" in text
    if (SHARED_DATA / "Set14").is_dir():
        assert "Set14 x4: PSNR + SSIM" in text
    assert "bicubic, torch `interpolate`" in text
    saved = md.read_text()
    assert saved.startswith(f"# notes kept\n{here[0]}\n## CPU: ") and saved.endswith(
        f"middle kept\n{other[0]}\nthe GPU's figures\n{other[1]}\ntail kept\n")
    assert "old" not in saved and "| ESPCN | fp32 | 64 x 32² | 2 |" in saved


@pytest.mark.slow
def test_bench_fixed_cost_section(tmp_path):
    out = cli(["--only", "startup", "--jobs", "2", "--repeats", "1"], cwd=tmp_path, command="bench",
              timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "process start -> first step" in out.stdout and "one job to the next" in out.stdout
    assert "sweep failed" not in out.stdout


# trainer.precision=auto / trainer.channels_last=auto (training.speed)

def fresh_cache(monkeypatch, folder, quick: bool = False):
    """``SR_ABLATE_CACHE`` at ``folder`` and nothing remembered by this process: as a new
    process on this machine would start. ``quick``: the probe's rounds cut to one short one
    (for tests of the cache, not of the figures)."""
    monkeypatch.setenv(speed.CACHE_ENV, str(folder))
    monkeypatch.setattr(speed, "_measured", {})
    if quick:
        monkeypatch.setattr(speed, "measure",
                            functools.partial(speed.measure, rounds=1, seconds=0.01))


def test_cpu_flags_are_read_from_cpuinfo():
    text = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    assert speed.cpu_flags(text) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert speed.cpu_flags("Features\t: fp asimd bf16\n") == {"fp", "asimd", "bf16"}  # ARM
    real = speed.cpu_flags()
    native = speed.native_bf16(torch.device("cpu"))
    assert (native is not None) == bool(real & {"avx512_bf16", "amx_bf16"})


def test_the_probe_is_measured_once_per_machine_and_read_from_the_cache(monkeypatch, tmp_path):
    """A fresh cache: the probe runs (fp32 and channels-last; bf16 too where the CPU has it)
    and is written under this machine's key; a new process reads it without measuring."""
    fresh_cache(monkeypatch, tmp_path)
    first = speed.measured(torch.device("cpu"))
    its = first["it_per_s"]
    expect = {"fp32", "fp32+channels_last"} | (
        {"bf16", "bf16+channels_last"} if speed.native_bf16(torch.device("cpu")) else set())
    assert set(its) == expect and all(v > 0 for v in its.values())
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved[speed.machine_key(torch.device("cpu"))]["it_per_s"] == its
    assert torch.__version__ in speed.machine_key(torch.device("cpu"))

    fresh_cache(monkeypatch, tmp_path)

    def no_measuring(*a, **k):
        raise AssertionError("measured again although the cache holds this machine")
    monkeypatch.setattr(speed, "measure", no_measuring)
    assert speed.measured(torch.device("cpu"))["it_per_s"] == its
    # another torch build or thread count is another key: measured anew
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    with pytest.raises(AssertionError, match="measured again"):
        speed.measured(torch.device("cpu"))


def test_a_damaged_or_unwritable_cache_is_measured_again(monkeypatch, tmp_path, capsys):
    (tmp_path / "speed.json").write_text("{half a file")
    fresh_cache(monkeypatch, tmp_path, quick=True)
    its = speed.measured(torch.device("cpu"))["it_per_s"]
    assert json.loads((tmp_path / "speed.json").read_text())  # rewritten whole
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    fresh_cache(monkeypatch, blocked / "cache")  # under a file: cannot be created
    entry = speed.measured(torch.device("cpu"))
    assert set(entry["it_per_s"]) == set(its)
    assert "not cached" in capsys.readouterr().err


def test_a_cache_entry_missing_a_figure_or_of_another_probe_is_measured_again(monkeypatch,
                                                                             tmp_path, capsys):
    """The entry that once made `auto` say "a bf16 step measured only 0.00x fp32": fp32
    figures only, on a CPU with native bf16. It is measured again, as is a complete entry of
    another probe version; a complete entry of this version is read as it is."""
    monkeypatch.setattr(speed, "cpu_flags", lambda cpuinfo=None: {"avx512f", "avx512_bf16"})
    cpu = torch.device("cpu")
    key = speed.machine_key(cpu)
    full = {"fp32": 2.0, "fp32+channels_last": 2.1, "bf16": 3.0, "bf16+channels_last": 3.1}
    fresh = {"fp32": 1.0, "fp32+channels_last": 1.0, "bf16": 5.0, "bf16+channels_last": 5.0}
    calls = []
    monkeypatch.setattr(speed, "measure", lambda device: calls.append(1) or dict(fresh))
    for entry, measured_again in [
        ({"it_per_s": {"fp32": 2.0, "fp32+channels_last": 2.1}, "probe_version": 2}, True),
        ({"it_per_s": full}, True),  # written before probe versions
        ({"it_per_s": full, "probe_version": speed.PROBE_VERSION - 1}, True),
        ({"it_per_s": {**full, "bf16": 0.0}, "probe_version": speed.PROBE_VERSION}, True),
        ({"it_per_s": full, "probe_version": speed.PROBE_VERSION}, False),
    ]:
        (tmp_path / "speed.json").write_text(json.dumps({key: entry}))
        fresh_cache(monkeypatch, tmp_path)
        calls.clear()
        its = speed.measured(cpu)["it_per_s"]
        assert bool(calls) == measured_again, entry
        assert its == (fresh if measured_again else full)
        saved = json.loads((tmp_path / "speed.json").read_text())[key]
        assert saved["probe_version"] == speed.PROBE_VERSION and saved["it_per_s"] == its
        c = speed.choose("auto", "auto", cpu, SRResNet())
        assert "0.00x" not in c.why_precision


def test_bf16_proven_on_the_cpu_is_not_claimed_on_a_gpu(monkeypatch):
    """SRResNet's bf16 quality was measured with CPU autocast: on CUDA, `auto` stays fp32 and
    says what it would have relied on; it never tags CUDA bf16 "measured equal"."""
    assert speed.not_proven(SRResNet(), None, torch.device("cpu")) is None
    why = speed.not_proven(SRResNet(), None, torch.device("cuda"))
    assert why == ("bf16 quality of SRResNet was measured with CPU autocast, not on cuda: fp32 "
                   "until it is measured there (trainer.precision=bf16 uses it anyway)")
    monkeypatch.setattr(speed, "native_bf16", lambda device: "compute capability 9.0 has bf16 "
                        "tensor cores" if device.type == "cuda" else None)
    monkeypatch.setattr(speed, "measured", lambda device: pytest.fail("measured"))
    c = speed.choose("auto", False, torch.device("cuda"), SRResNet())
    assert c.precision == "fp32" and c.why_precision == f"auto: {why} (docs/precision.md)"


def test_explicit_settings_are_used_as_given_without_measuring(monkeypatch, tmp_path):
    fresh_cache(monkeypatch, tmp_path)
    monkeypatch.setattr(speed, "measure", lambda *a, **k: pytest.fail("measured"))
    c = speed.choose("fp32", True, torch.device("cpu"), SRResNet())
    assert (c.precision, c.channels_last) == ("fp32", True)
    assert c.tags() == {"sr_ablate.precision": "fp32",
                        "sr_ablate.precision_reason": "trainer.precision=fp32",
                        "sr_ablate.channels_last": "true",
                        "sr_ablate.channels_last_reason": "trainer.channels_last=true"}
    emulated = "this CPU has no native bf16: it is emulated, expect it several times slower"
    monkeypatch.setattr(speed, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512f"})
    assert emulated in speed.choose("bf16", False, torch.device("cpu"), SRResNet()).why_precision
    monkeypatch.setattr(speed, "cpu_flags", lambda cpuinfo=None: {"avx512f", "avx512_bf16"})
    assert speed.choose("bf16", False, torch.device("cpu"), SRResNet()).why_precision == \
        "trainer.precision=bf16"


def test_auto_follows_the_measurement_on_this_machine():
    """SRResNet (bf16 proven) on this CPU: bf16 exactly when the CPU has native bf16 and its
    probe step was at least 10% faster; channels-last when it was 3% faster at that
    precision. The reasons say which."""
    cpu = torch.device("cpu")
    its = speed.measured(cpu)["it_per_s"]
    c = speed.choose("auto", "auto", cpu, SRResNet())
    if speed.native_bf16(cpu) and max(its["bf16"], its["bf16+channels_last"]) >= 1.1 * max(
            its["fp32"], its["fp32+channels_last"]):
        assert c.precision == "bf16" and "measured equal to fp32 in quality" in c.why_precision
    else:
        assert c.precision == "fp32" and c.why_precision.startswith("auto: ")
    ratio = its[f"{c.precision}+channels_last"] / its[c.precision]
    assert c.channels_last == (ratio >= 1.03)
    assert f"{ratio:.2f}x" in c.why_channels_last


@pytest.mark.parametrize("model, loss, why", [
    ("VDSR", None, "bf16 training of VDSR has not been measured against fp32"),
    ("ESPCN", None, "bf16 training of ESPCN has not been measured against fp32"),
    ("SRResNet", torch.nn.Conv2d(3, 3, 1), "a network in the loss (VGG)"),
])
def test_auto_keeps_fp32_where_bf16_quality_is_not_proven(model, loss, why):
    """Whatever the CPU: a model or a loss that bf16 was not measured for trains in fp32."""
    import sr_ablate.models as zoo
    c = speed.choose("auto", False, torch.device("cpu"), getattr(zoo, model)(), loss)
    assert c.precision == "fp32"
    if speed.native_bf16(torch.device("cpu")):
        assert why in c.why_precision


def test_auto_keeps_fp32_on_a_cpu_without_native_bf16(monkeypatch, tmp_path):
    """The same SRResNet on a CPU whose flags lack avx512_bf16/amx_bf16 (bf16 emulated)."""
    monkeypatch.setattr(speed, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512f"})
    fresh_cache(monkeypatch, tmp_path, quick=True)
    c = speed.choose("auto", "auto", torch.device("cpu"), SRResNet())
    assert c.precision == "fp32" and c.why_precision == "auto: no native bf16 on this cpu device"
    assert not speed.measured(torch.device("cpu"))["it_per_s"].keys() & {"bf16"}  # not measured


def test_a_run_records_the_settings_it_trained_with(store, compose, tmp_path, capsys):
    """auto: the tags hold what was chosen and why (the params keep "auto", as typed), the
    choice is said once on stderr, and evaluation ran in fp32 (its PSNR is that of the
    final weights evaluated afresh outside the run)."""
    cfg = compose(QUIET)
    ids = []
    out = run_job(cfg, cwd=str(tmp_path), on_start=ids.append)
    frame = tracking.runs_frame(store).set_index("run_id")
    row = frame.loc[ids[0]]
    expect = speed.choose("auto", "auto", torch.device("cpu"), SRResNet(blocks=1, channels=8))
    assert row["trainer.precision"] == "auto" and row["trainer.channels_last"] == "auto"
    for key, value in expect.tags().items():
        assert row[f"tag:{key}"] == value
    assert capsys.readouterr().err.count(expect.line()) <= 1  # once per process at most
    assert out["val/psnr"] > 0


def test_evaluation_is_fp32_even_inside_an_autocast_region():
    """The evaluation's forward runs in fp32 whatever context it is called from: the same SR
    output (before rounding) and metrics inside a bf16 autocast region as outside (in bf16
    the output would differ by ~0.25 of a grey level)."""
    torch.manual_seed(0)
    model = SRResNet(channels=8, blocks=1).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.bias += 0.5  # outputs mid-grey, not clamped to 0: the differences show
    images = data.load_eval_images([data.builtin_dir() / data.BUILTIN_VAL[0]], 2)
    ev = Evaluator(images, 2, Protocol(), prefix="x")
    plain, out = ev(model), super_resolve(model, images[0][1][:, :40, :40], 2)
    with torch.autocast("cpu", torch.bfloat16):
        inside, out_inside = ev(model), super_resolve(model, images[0][1][:, :40, :40], 2)
        assert model(torch.rand(1, 3, 8, 8)).dtype == torch.bfloat16  # the region is real
    del plain["x/seconds"], inside["x/seconds"]
    assert inside == plain and len(plain) == 4
    assert out_inside.dtype == torch.float64 and torch.equal(out_inside, out)


def test_a_resumed_run_keeps_the_settings_it_started_with(store, compose, tmp_path):
    """Stopped (SIGTERM) at step 2, then resumed: the run goes on with the precision and
    layout its checkpoint says it started with, not those this machine would choose now (a
    sweep resumed on another machine must not change precision half-way through a run)."""
    short = [*QUIET, "trainer.steps=4", "trainer.checkpoint_every=2"]

    def stop_at_2(step, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Interrupted):
        run_job(compose(short), cwd=str(tmp_path), on_eval=stop_at_2)
    (ckpt,) = (tmp_path / ".sr_ablate" / "checkpoints").glob("*.pt")
    state = checkpoint.load(ckpt)
    now = speed.choose("auto", "auto", torch.device("cpu"), SRResNet(blocks=1, channels=8))
    assert state["speed"] == dataclasses.asdict(now)  # what the run started with
    other = "fp32" if now.precision == "bf16" else "bf16"  # as if started on another machine
    state["speed"] = {"precision": other, "channels_last": not now.channels_last,
                      "why_precision": "auto: elsewhere", "why_channels_last": "auto: elsewhere"}
    checkpoint.save_atomic(state, ckpt)
    run_job(compose([*short, "resume=true"]), cwd=str(tmp_path))
    (row,) = tracking.runs_frame(store).to_dict("records")
    assert row["status"] == "FINISHED" and row["tag:sr_ablate.precision"] == other
    assert row["tag:sr_ablate.channels_last"] == str(not now.channels_last).lower()
    assert row["tag:sr_ablate.precision_reason"] == "auto: elsewhere; kept on resume"


def test_a_report_says_when_its_runs_trained_in_different_precisions(knob_runs, tmp_path):
    """fp32 (twice) and bf16 runs in one table: the report says so, with the counts."""
    from sr_ablate.report import build
    uri, out = knob_runs
    build.write(tracking.runs_frame(uri), tmp_path, "knobs")
    text = (tmp_path / "results.md").read_text()
    assert "Trained in different precisions (fp32 ×2, bf16 ×1; tag sr_ablate.precision)" in text
    one = tracking.runs_frame(uri)
    build.write(one[one["trainer.precision"] == "bf16"], tmp_path / "one", "bf16 only")
    assert "Trained in bf16. " in (tmp_path / "one" / "results.md").read_text()
