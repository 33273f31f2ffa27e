"""Hydra's submitit SLURM launcher, watching the queue where SLURM keeps no accounting
(resnet_repro.slurm_watch says why). Hydra takes launchers only from the hydra_plugins package."""

from __future__ import annotations

import logging
from typing import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

log = logging.getLogger("resnet_repro.launch")


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import UncompletedJobError  # submitit is imported once a grid is launched

        from resnet_repro.slurm_watch import watch_the_queue

        # submitit warns where sacct fails (a cluster whose accounting is down); the watcher asks squeue then.
        # Set after submitit's import, which sets the level itself
        logging.getLogger("submitit").setLevel(logging.ERROR)
        watch_the_queue()
        try:
            return super().launch(job_overrides, initial_job_idx)
        except UncompletedJobError as e:  # every job has ended by now; launch.main names the runs missing
            log.error(f"a job ended without its result (killed: scancel, out of memory, a lost node?): "
                      f"{' '.join(str(e).splitlines()[:2])}")
            return []
