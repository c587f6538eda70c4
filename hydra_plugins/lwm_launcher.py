"""The lwm Slurm launcher (launch/submit.py) where Hydra looks for launchers: a Hydra plugin must
live in the hydra_plugins namespace package (configs/hydra/launcher/lwm_slurm.yaml names it)."""

from launch.submit import SlurmLauncher


class LwmSlurmLauncher(SlurmLauncher):
    """launch.submit.SlurmLauncher: every job's layout checked first, setup and env carried,
    cluster.wait=false returns with the job ids."""
