"""Layout planning: memory per GPU and tokens/s/GPU of candidate layouts, before a job runs.

``workload`` (what the data asks: tokens and attention pairs per rank) feeds ``memory`` and
``throughput``, two models whose terms are exact counts scaled by constants fitted on measured
runs (``calibration``, data in ``calibration.json``); ``layouts`` enumerates and ranks
layouts. ``tools/plan.py`` is the command line.
"""
