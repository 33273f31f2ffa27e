"""The `slurm_env` fixture: the environment a SLURM client needs (SLURM_CONF etc.) when a cluster
answers, else the test skips. `scripts/slurm_local.sh start` makes one of this machine; its env file
is read when SLURM_CONF is not set. Import the fixture into a test module:

    from slurm_cluster import slurm_env  # noqa: F401
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HINT = "no SLURM cluster reachable: run scripts/slurm_local.sh start"
# a node that takes jobs: idle or mixed now, or allocated or completing (another test's jobs hold its CPUs;
# ours queue behind them). Counting only idle and mixed skipped a test whenever a parallel one was running.
READY = {"idle", "mixed", "allocated", "completing"}


def local_cluster_env() -> dict[str, str]:
    """The variables scripts/slurm_local.sh wrote to its env file (`export KEY=VALUE` lines), if any."""
    env_file = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/resnet-repro-slurm")) / "env"
    found = {}
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.removeprefix("export ").partition("=")
            if sep and key.isidentifier():
                found[key] = value.strip("'\"")
    return found


def cluster_env() -> tuple[dict[str, str] | None, str]:
    """(the client environment, "") when `sinfo` shows a node that takes jobs within a few seconds,
    else (None, why not)."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        return None, "hydra-submitit-launcher is not installed: pip install -e '.[slurm]'"
    if shutil.which("sinfo") is None:
        return None, f"{HINT} (sinfo not found)"
    env = dict(os.environ)
    if "SLURM_CONF" not in env:
        env.update(local_cluster_env())
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return None, f"{HINT} (sinfo did not answer within 5 s)"
    states = set(out.stdout.split())
    if out.returncode != 0 or not states & READY:
        said = (out.stderr.strip().splitlines() or [" ".join(sorted(states)) or "no nodes"])[-1]
        return None, f"{HINT} (sinfo: {said[:120]})"
    return env, ""


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """os.environ plus what reaches the cluster (SLURM_CONF); skips the test where none answers."""
    env, why = cluster_env()
    if env is None:
        pytest.skip(why)
    return env
