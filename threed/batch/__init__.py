"""Batch generation: many prompts (or images), one run directory each, on local workers or a Ray cluster.

``threed batch prompts.txt`` -- see :mod:`threed.batch.runner` (scheduling, retries, progress),
:mod:`threed.batch.jobs` (the job list), :mod:`threed.batch.index` (``OUT/index.json``),
:mod:`threed.batch.worker` (one job in a worker), :mod:`threed.batch.local` (local processes) and
:mod:`threed.batch.cluster` (Ray tasks), and docs/batch.md.
"""
