"""The Ray executor: a run's builds, analyses and cells as Ray tasks on a cluster's nodes
(``cluster.executor.RayExecutor``), with the work each node does (``cluster.tasks``).

It offers the local executor's methods (``bench.executor``) so the runner runs the same plan either way; it
uses ``bench`` and the store, and nothing below imports it."""
