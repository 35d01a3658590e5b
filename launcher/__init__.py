"""Run, render and submit the fine-tuning recipes locally, on Slurm and on Kubernetes."""

__version__ = "0.1.0"
