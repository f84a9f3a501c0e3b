"""Sweeps: sweep files and grids (``grid``), sharing one machine between jobs (``resources``),
Optuna searches (``optuna_spec``, ``optuna_study``, ``optuna_worker``)."""
