"""Orchestration on top of the stages: ``Study``, the quickstart, plots and hardware calibration."""
