"""The run pipeline: a ``RunConfig`` (``bench.config``) planned into cells and artifact builds
(``bench.plan``), run by the local executor in child processes (``bench.executor``, ``bench.isolation``),
each cell measured by the one timer or MLPerf LoadGen (``bench.cell``, ``bench.timer``, ``bench.loadgen``),
its row appended to the results the moment it ends (``bench.runner``, ``bench.results``); plus the
environment a run records and the machine's roofs (``bench.env``, ``bench.peak``).

Imports point down: ``bench`` uses engines, the store, calibration, the catalogue, analysis and common, and
never the packages built on it (``cluster``, ``diagnose``, ``report``)."""
