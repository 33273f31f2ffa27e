"""Our Hydra launcher for SLURM (launcher.py); Hydra takes launchers from the hydra_plugins package only."""
