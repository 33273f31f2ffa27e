"""Faults while writing: a full disk or a read-only folder is one line naming the file and what to do; the
last good checkpoint and every finished result stay whole; the same command resumes once the cause is gone.
On a real small file system (a tmpfs, mounted as root); without root, on a folder made read-only."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from training import read_metrics, setup, train_run, with_train, without_timing

from resnet_repro.errors import WriteFailed

ROOT = os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs; `fill()` takes all its free space, `free()` gives it back."""
    if not ROOT:
        pytest.skip("needs root to mount a small file system")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    filler = disk / "filler"

    def fill(leave: int = 0):
        with open(filler, "ab", buffering=0) as f:  # unbuffered: nothing left to flush on close
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:  # the disk is full
                pass
        if leave:
            os.truncate(filler, max(0, filler.stat().st_size - leave))

    try:
        yield disk, fill, lambda: filler.unlink(missing_ok=True)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


OVER = ["train.iterations=8", "train.milestones=[6]", "engine.log_every=2", "engine.eval_every=8",
        "engine.checkpoint_every=4"]


def test_a_disk_that_fills_up_during_training_loses_nothing_and_the_run_resumes(tmp_path, small_disk):
    disk, fill, free = small_disk
    cfg, engine, data, whole = setup(tmp_path / "whole", *OVER)
    train_run(cfg, whole, data, engine)

    cfg, engine, data, run = setup(disk / "runs", *OVER)
    filling = with_train(data, lambda it: fill() if it == 5 else None)  # after the checkpoint at 4
    with pytest.raises(WriteFailed) as failed:
        train_run(cfg, run, filling, engine)
    message = str(failed.value)
    assert str(run.path) in message and "no space left" in message and "run the same command again" in message
    assert torch.load(run.checkpoint)["iteration"] == 4  # the last good checkpoint, whole
    assert not [p for p in run.path.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # no temp files left

    free()
    assert train_run(cfg, run, data, engine).status == "finished"
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(whole))


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "resnet_repro", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def assert_one_line(out, *needles):
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in needles), out.stderr


def test_a_full_disk_is_one_line_from_the_cli(tmp_path, small_disk):
    disk, fill, _ = small_disk
    fill(leave=2048)
    out = cli("run", "custom", "profile=smoke", "model.n=1", "engine.threads=1", "--results-dir", disk / "results",
              cwd=tmp_path)
    assert_one_line(out, "cannot write", str(disk), "no space left")


def test_a_read_only_folder_is_one_line(tmp_path):
    results = tmp_path / "ro" / "results"
    results.mkdir(parents=True)
    if ROOT:  # root writes anywhere: make the file system itself read-only
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(tmp_path / "ro")],
                          capture_output=True).returncode:
            pytest.skip("this machine does not allow mounting a tmpfs")
    else:
        os.chmod(tmp_path / "ro", 0o555)
    try:
        out = cli("report", "--results-dir", tmp_path / "ro" / "results", cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert "read-only" in out.stderr or "permission denied" in out.stderr or "cannot make the folder" in out.stderr
    finally:
        if ROOT:
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], capture_output=True)
        else:
            os.chmod(tmp_path / "ro", 0o755)
