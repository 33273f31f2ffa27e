"""How our SLURM launcher (hydra_plugins/resnet_repro_slurm, which conf/hydra/launcher/slurm.yaml names)
sees the end of a job that ends without its result file on a cluster without SLURM accounting.

submitit learns a job's state from `sacct`. Without accounting (no slurmdbd) sacct knows no job, so
submitit waits for the result file each job writes as it ends; a job killed before it can write one
(`scancel --signal=KILL`, an out-of-memory kill, a node lost) would be waited for forever. Here, where sacct
has no record of a job, `squeue` is asked: a job in neither has ended. Hydra takes the jobs' results in
order and stops at the first one that has none, so such a job is declared ended only once no job of the
grid is left in the queue: every other job has ended by then, and the launching process names the runs
that did not finish (launch.main). Imported only when a grid is launched: it needs submitit.
"""

from __future__ import annotations

import subprocess
import time

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "TIMEOUT"}
GONE = "GONE"  # not a SLURM state: what a job that neither sacct nor squeue knows is said to be
POLL_S = 60  # at most this long between two looks at the queue (submitit's own cap is 10 minutes)


def queued_jobs(job_ids: set[str]) -> set[str] | None:
    """Those of `job_ids` (`123` or array tasks `123_4`) still in SLURM's queue, not ended; None if squeue
    cannot answer (then nothing is declared ended)."""
    mains = sorted({j.split("_")[0] for j in job_ids})
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--format=%i %T", f"--jobs={','.join(mains)}"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:  # every id unknown to the controller (long ended) is an error too
        return set() if "Invalid job id" in done.stderr else None
    listed = (line.split() for line in done.stdout.splitlines())
    return {fields[0] for fields in listed if len(fields) == 2 and fields[1] not in ENDED_STATES} & job_ids


def has_accounting() -> bool:
    """Whether this cluster keeps accounting, so that sacct knows its jobs (assumed so if scontrol cannot say)."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    return "accounting_storage/none" not in config


class QueueWatcher(SlurmInfoWatcher):
    """submitit's watcher (sacct), with squeue for the jobs sacct has no record of."""

    def __init__(self, delay_s: int):
        super().__init__(delay_s)
        self._ask_sacct = has_accounting()

    def _make_command(self) -> list[str] | None:
        # without accounting sacct answers only "Slurm accounting storage is disabled", on every poll
        return super()._make_command() if self._ask_sacct else None

    def update(self) -> None:
        super().update()
        self._last_status_check = time.time()  # submitit's update sets it only where it called sacct
        unknown = {j for j in self._registered - self._finished if not self._info_dict.get(j)}
        if not unknown or queued_jobs(unknown) != set():
            return
        for job_id in unknown:  # done() reads a result file first: a job that wrote one ended as it says
            self._info_dict[job_id] = {"State": GONE}
            self._finished.add(job_id)


def watch_the_queue() -> None:
    """From now on every submitit SLURM job is watched through QueueWatcher (they share their class's)."""
    SlurmJob.watcher = QueueWatcher(delay_s=POLL_S)
