"""Alembic migrations of the job store (package data: an installed ris-jobs upgrades its own database).

`server.store.migrate` runs them programmatically; `env.py` is Alembic's entry point and `versions/` holds one
file per revision. Revision 0001 is the schema that `create_all` built before migrations existed, so a database
made by it is stamped 0001 and upgraded from there.
"""
