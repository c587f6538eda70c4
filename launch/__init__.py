"""The launcher: the `lwm` CLI (cli.py), the table of stages (stages.py) and Slurm job scripts
(slurm.py). The only package that knows every stage."""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
