"""INT8 diagnostics built on the run pipeline: ``explain`` (per-layer quantization error, per-op time),
the accuracy-driven search for the nodes to keep in float (``diagnose.precision_search``) and ``int8-check``
(the CPU's integer kernels against their float simulation).

They use ``bench`` (its child processes, cells, timer) and the store; nothing below imports them."""
