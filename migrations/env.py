"""Alembic environment: the database comes from DATABASE_URL (or -x url=...)."""
import os

from alembic import context
from sqlalchemy import create_engine

from eventlog.settings import sqlalchemy_url

url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
if not url:
    raise SystemExit("DATABASE_URL is not set")

engine = create_engine(sqlalchemy_url(url))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
