"""A database URL is usable only with its driver installed: ``postgresql://`` (an MLflow store
or an Optuna storage) without it is refused in one line naming the extra, before any work.

SQLAlchemy picks the driver: 2.1 maps plain ``postgresql://`` to psycopg 3, which the
``cluster`` extra installs; ``postgresql+psycopg2://`` names psycopg2 instead.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy

from sr_ablate import UserError

# the module SQLAlchemy imports -> the package that provides it
PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}
EXTRA = "pip install 'sr_ablate[cluster]' (pip install -e '.[cluster]' in a checkout)"


_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s'\"]+:)([^@\s'\"]+)(@)")


def hide_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ***, for what is stored in
    MLflow (params, tags): ``sweep.storage=postgresql://u:secret@h/db`` -> ``...u:***@h/db``."""
    return _PASSWORD.sub(r"\1***\3", text)


def check_driver(url: str, what: str) -> None:
    """UserError (one line) when ``url`` is a PostgreSQL URL whose driver does not import.
    ``what`` names where the URL came from, e.g. ``tracking.uri`` or ``sweep.storage``."""
    if not url.lower().startswith("postgresql"):
        return
    try:
        dialect = sqlalchemy.engine.make_url(url).get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise UserError(f"{what}={hide_passwords(url)!r} names a driver SQLAlchemy does not "
                        "know; use postgresql://user:password@host/db (psycopg, from the cluster "
                        f"extra: {EXTRA})") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        name = (e.name or dialect.driver).split(".")[0]
        fix = EXTRA if name == "psycopg" else (
            f"pip install '{PACKAGES.get(name, name)}', or write postgresql:// for psycopg, "
            f"which the cluster extra installs ({EXTRA})")
        raise UserError(f"{what}={hide_passwords(url)!r} needs the PostgreSQL driver {name}, "
                        f"which is not installed; {fix}") from None


# pg_advisory_lock's key: any constant that other applications are unlikely to use
SCHEMA_LOCK = 0x5352_4142  # "SRAB"


@contextmanager
def opened(url: str, what: str, timeout: float = 5.0) -> Iterator[None]:
    """Open the PostgreSQL database at ``url`` before MLflow or Optuna does, and hold an
    advisory lock while they create (or check) its tables: two workers opening a new database
    at the same instant would otherwise both create them, and one fails (duplicate key on
    alembic_version). UserError (one line) when it cannot be opened (no driver, no server,
    wrong password, no such database), so a command stops before any work. ``what``: the key
    the URL came from. Nothing for other URLs (a sqlite file is opened by whoever uses it)."""
    if not url.startswith("postgresql"):
        yield
        return
    check_driver(url, what)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": int(timeout)})
    try:
        try:
            conn = engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as e:
            first = " ".join(str(e.orig if getattr(e, "orig", None) else e).split())[:300]
            raise UserError(f"{what}={hide_passwords(url)!r}: the database does not answer "
                            f"({first}); start PostgreSQL and create the database (README: "
                            "Running on a cluster), or use a sqlite:/// file on one "
                            "machine") from None
        with conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                             {"k": SCHEMA_LOCK})
    finally:
        engine.dispose()
