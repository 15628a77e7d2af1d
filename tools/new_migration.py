"""Autogenerates a migration for one service from its models (`make migration SERVICE=x MSG=...`).

It upgrades a scratch SQLite database to head, then lets Alembic compare the
models with it, so the new revision holds exactly the model changes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command

from services.common.migrations import alembic_config, upgrade

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("service")
    parser.add_argument("-m", "--message", required=True)
    options = parser.parse_args()
    location = ROOT / "services" / options.service / "migrations"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/scratch.db"
        upgrade(location, url)
        command.revision(alembic_config(location, url), message=options.message, autogenerate=True)


if __name__ == "__main__":
    main()
