"""Automated trace analysis for incident responders, and the terminal views of traces.

- :func:`kelemetry_py.analysis.analyzer.analyze`: an assembled object tree → the analysis document
  (timeline, rollout latency, failures, changes), described by :data:`kelemetry_py.analysis.schema.ANALYSIS_SCHEMA`;
- :func:`kelemetry_py.analysis.http.add_analysis_routes`: ``GET /api/analysis`` over the frontend's traces;
- :mod:`kelemetry_py.analysis.report` and :mod:`kelemetry_py.analysis.tree`: terminal renderings used by the
  ``analyze`` and ``trace`` commands, which talk to a server through :mod:`kelemetry_py.analysis.client`.
"""
