"""Room `results`: a finished (or interrupted) search, read back. One handle found by name, folder
or parent run id (paths, space file, trial records, leaderboard), the leaderboard as text and CSV,
the cost ledger, knob sensitivity, the report page. What `hpo.report` and `hpo.promote` read.

Import rule: never imports Ray (reports start fast, on any machine), nor the execution or
simulation rooms.
"""
