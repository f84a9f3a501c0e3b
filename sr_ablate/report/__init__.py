"""The report: runs -> one row per variant (``table``, ``stats``) -> verdicts -> Markdown,
LaTeX, CSV (``formats``), figures and HTML (``build`` writes them all)."""
