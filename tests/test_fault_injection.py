"""Fault injection: kills at random moments, Ctrl-C, concurrent starts, atomic metrics.

Every interrupted run must end, after resuming, with exactly the loss sequence of an
uninterrupted one; no kill may leave a file half written.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cramming.backend.checkpoint import latest_checkpoint
from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import MetricsLogger, read_jsonl
from cramming.backend.runlock import LOCK_FILE, RunLock
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import WandbConfig
from cramming.errors import RunInUseError
from cramming.pretrain import run_pretraining
from tests.conftest import REPO_ROOT

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def config(overrides, *extra):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def default_sigint() -> None:
    """In the child: Ctrl-C raises KeyboardInterrupt even where the parent ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler for in-process tests (a CI shell may ignore SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def common(tiny_overrides) -> list[str]:
    """A checkpoint after every step: many writes for kills to land in."""
    return [*tiny_overrides, "budget=12", "train.checkpoint_every_steps=1",
            "train.validate_at_end=false"]


@pytest.fixture(scope="module")
def reference(common, tmp_path_factory) -> list[float]:
    run_dir = tmp_path_factory.mktemp("reference")
    run_pretraining(config(common), run_dir)
    assert steps(run_dir) == list(range(1, 13))
    return losses(run_dir)


# ---------------------------------------------------------------------------- Ctrl-C


class SignalAtStep(TrainingHook):
    """Sends this process ``count`` SIGINTs right after optimizer step ``step``."""

    def __init__(self, step: int, count: int = 1):
        self.step, self.count = step, count

    def after_step(self, trainer, record):
        if trainer.step == self.step:
            for _ in range(self.count):
                signal.raise_signal(signal.SIGINT)


def test_sigint_writes_a_checkpoint_and_resume_continues(common, reference, tmp_path,
                                                        python_sigint_handler):
    with pytest.raises(KeyboardInterrupt):  # after the checkpoint, as Ctrl-C should
        run_pretraining(config(common, "train.checkpoint_every_steps=0"), tmp_path,
                        hooks=[SignalAtStep(4)])
    assert latest_checkpoint(tmp_path).name == "step-000000004"
    assert steps(tmp_path) == [1, 2, 3, 4]
    assert not (tmp_path / "model").exists()
    run_pretraining(config(common, "resume=true"), tmp_path)
    assert losses(tmp_path) == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_second_sigint_stops_at_once_without_a_checkpoint(common, tmp_path,
                                                         python_sigint_handler):
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(config(common, "train.checkpoint_every_steps=0"), tmp_path,
                        hooks=[SignalAtStep(3, count=2)])
    assert latest_checkpoint(tmp_path) is None  # the second Ctrl-C did not wait for one
    assert steps(tmp_path) == [1, 2]  # stopped inside step 3, before it was logged
    RunLock.acquire(tmp_path).release()  # and the run folder is free again


# ---------------------------------------------------------------------------- kills


def test_ctrl_c_and_sigkill_at_random_moments_then_resume_reproduce_the_run(
        common, reference, tmp_path):
    """The real CLI: Ctrl-C once, then SIGKILL at random moments (one of them while a
    checkpoint is being written), resuming each time; the losses equal the reference."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "pretrain_bert.py", *common, "name=faults",
               f"hydra.run.dir={run_dir}", "resume=auto"]
    seed = random.SystemRandom().randrange(2**32)  # the runs seed the module's generator
    rng = random.Random(seed)
    context = f"seed {seed}"

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)

    def wait_for_records(process: subprocess.Popen, count: int) -> None:
        deadline = time.time() + 120
        while len(read_jsonl(run_dir / "metrics.jsonl")) < count and time.time() < deadline:
            assert process.poll() is None, f"{context}: the run ended early"
            time.sleep(0.01)

    # Ctrl-C: the run writes a checkpoint at the step it stops on and exits with 130.
    process = start()
    wait_for_records(process, 2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    assert "checkpoint written" in output and "Traceback" not in output
    assert output.rstrip().endswith("interrupted (Ctrl-C); continue with resume=true")
    logged = steps(run_dir)
    assert latest_checkpoint(run_dir).name == f"step-{logged[-1]:09d}", context

    for kind in ["mid-write", "random", "random", "random"]:
        if len(steps(run_dir)) >= 10:
            break  # keep the rest of the run to finish uninterrupted
        process = start()
        before = len(read_jsonl(run_dir / "metrics.jsonl"))
        wait_for_records(process, min(before + rng.randint(1, 2), 11))
        if kind == "mid-write":  # as soon as a checkpoint's staging folder appears
            folder, deadline = run_dir / "checkpoints", time.time() + 30
            while time.time() < deadline and process.poll() is None and not any(
                    p.name.startswith(".") and ".tmp-" in p.name for p in folder.iterdir()):
                time.sleep(0.001)
            assert process.poll() is None, f"{context}: no checkpoint write was caught"
        else:
            time.sleep(rng.uniform(0.0, 0.08))  # inside a step, an append or a write
        process.kill()
        process.communicate(timeout=60)
        assert not (run_dir / "model").exists(), f"{context}: killed too late"
        latest = latest_checkpoint(run_dir)
        assert latest is None or (latest / "state.pt").is_file(), context
        context += f"; {kind} kill after {len(steps(run_dir))} logged, {latest and latest.name}"

    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps(run_dir) == list(range(1, 13)), context
    assert losses(run_dir) == pytest.approx(reference, rel=1e-5, abs=1e-6), context
    assert (run_dir / "model" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------- run lock


def test_two_runs_of_one_name_started_together_one_is_refused(tiny_overrides, tmp_path):
    run_dir = tmp_path / "shared"
    command = [sys.executable, "pretrain_bert.py", *tiny_overrides, "budget=24",
               "train.validate_at_end=false", "name=twin", f"hydra.run.dir={run_dir}"]
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.pid, p.returncode, p.communicate(timeout=300)[1]) for p in processes]
    results = [(pid, process.returncode, err) for (pid, _, err), process
               in zip(results, processes)]
    codes = sorted(code for _, code, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    (winner,) = [pid for pid, code, _ in results if code == 0]
    (refused,) = [err for _, code, err in results if code == 2]
    errors = [line for line in refused.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in refused, refused[-2000:]
    assert f"is in use by pid {winner} on {socket.gethostname()}" in errors[0]
    assert steps(run_dir) == list(range(1, 25))  # one run's metrics, nothing interleaved


def test_run_lock_refuses_a_live_holder_and_is_free_after_release(tmp_path):
    lock = RunLock.acquire(tmp_path)
    info = json.loads((tmp_path / LOCK_FILE).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["started"]
    with pytest.raises(RunInUseError, match=f"in use by pid {os.getpid()} on "):
        RunLock.acquire(tmp_path)
    lock.release()
    lock.release()  # idempotent
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean end leaves no holder
    RunLock.acquire(tmp_path).release()


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from cramming.backend.runlock import RunLock
            lock = RunLock.acquire({str(tmp_path)!r})
            print("locked", flush=True)
            time.sleep(600)
            """)], cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=f"pid {holder.pid} "):
            RunLock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level("WARNING"):
        lock = RunLock.acquire(tmp_path)  # the kernel dropped the dead holder's flock
    lock.release()
    assert f"pid {holder.pid}" in caplog.text and "taking it over" in caplog.text


# ---------------------------------------------------------------------------- metrics


def write_metrics(path: Path, count: int) -> str:
    text = "".join(json.dumps({"step": step, "loss": 1.0 / step, "pad": "x" * 80}) + "\n"
                   for step in range(1, count + 1))
    path.write_text(text)
    return text


def test_truncation_drops_later_records_and_a_torn_line(tmp_path):
    logger = MetricsLogger(tmp_path, WandbConfig(), "run", {})
    text = write_metrics(logger.path, 5)
    logger.path.write_text(text + '{"step": 6, "lo')  # a kill mid-append
    logger.path.chmod(0o640)
    logger.truncate_after(3)
    assert steps(tmp_path) == [1, 2, 3]
    assert logger.path.read_text() == "".join(text.splitlines(keepends=True)[:3])
    assert logger.path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp left
    logger.log({"step": 4, "loss": 0.25})
    assert steps(tmp_path) == [1, 2, 3, 4]


def test_truncation_interrupted_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    logger = MetricsLogger(tmp_path, WandbConfig(), "run", {})
    text = write_metrics(logger.path, 5)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        logger.truncate_after(2)
    assert logger.path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


KILL_MID_WRITE = textwrap.dedent("""
    import io, os, random, signal, sys
    from pathlib import Path
    from cramming.backend.metrics import MetricsLogger
    from cramming.config.schema import WandbConfig

    real_open = io.open

    class DiesMidWrite:
        def __init__(self, handle):
            self.handle = handle
        def write(self, text):  # a random part of the text reaches the disk, then SIGKILL
            self.handle.write(text[: random.randrange(len(text))])
            self.handle.flush()
            os.fsync(self.handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.handle.close()
        def __getattr__(self, name):
            return getattr(self.handle, name)

    def open_dying(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return DiesMidWrite(handle) if any(m in mode for m in "wax+") else handle

    io.open = open_dying  # every write path: open(), Path.write_text, os.fdopen
    logger = MetricsLogger(Path(sys.argv[1]), WandbConfig(), "run", {})
    logger.truncate_after(int(sys.argv[2]))
""")


def test_sigkill_in_the_middle_of_truncation_leaves_the_old_file(tmp_path):
    """Killed at a random byte of its write, truncation leaves metrics.jsonl as it was."""
    script = tmp_path / "truncate.py"
    script.write_text(KILL_MID_WRITE)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    full = write_metrics(run_dir / "metrics.jsonl", 2000)
    for _ in range(3):
        killed = subprocess.run([sys.executable, str(script), str(run_dir), "1000"],
                                cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
                                timeout=60)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert (run_dir / "metrics.jsonl").read_text() == full
    MetricsLogger(run_dir, WandbConfig(), "run", {}).truncate_after(1000)  # cleans up
    assert steps(run_dir) == list(range(1, 1001))
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]


# ---------------------------------------------------------------------------- teardown


def test_cleanup_leaves_gloo_workers_idle_even_while_ddp_holds_the_group():
    """A rank's exit must not race gloo's workers (see cleanup_distributed)."""
    import torch
    import torch.distributed as dist

    from cramming.backend.distributed import GLOO_WORKER, _thread_states, cleanup_distributed

    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 3))  # holds it
    model(torch.ones(2, 3)).sum().backward()
    dist.all_reduce(torch.ones(3))
    assert _thread_states(GLOO_WORKER)  # the workers exist and outlive the destroy below
    cleanup_distributed()
    assert not dist.is_initialized()
    states = _thread_states(GLOO_WORKER)
    assert all(state == "S" for state, _ in states.values()), states
