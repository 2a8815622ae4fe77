"""Runs the job service's processes on one machine: ``fakescope serve`` (:mod:`serve.stack`).

It sits beside ``api/`` and ``workers/``, the apps it starts, rather than in the core package: the
core never depends on them, and the per-process images, which run one process each, leave it out.
"""
