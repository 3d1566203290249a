"""Backends: Slurm, Argo Workflows."""
