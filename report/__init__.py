"""Reports of results directories: ``report.md`` and ``report.html`` of a run (``report.run_report``), the
comparison of runs (``report.compare``) and the charts both draw (SVG: ``report.svg_charts``, ``report.curves``;
the roofline: ``report.roofline``).

A report reads rows (``results.jsonl``) and ``env.json`` and measures nothing. It sits above the run pipeline
(``bench``), which never imports it."""
