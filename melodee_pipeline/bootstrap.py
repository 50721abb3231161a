"""`melodee-pipeline db init`: create the Melodee tables that are missing, exactly as Melodee does.

Above both `db.schema` (the definitions) and `settings` (the keys), so neither imports the other's
callers. Existing tables are never altered; a table is created with Melodee's own definition and
index names. `users` is Melodee's and never created: `staging_items.reviewed_by` references it
only when it already exists. An empty `settings` table stays empty (Melodee seeds it only then).
"""

from __future__ import annotations

import sqlalchemy as sa

from melodee_pipeline.db.schema import metadata, staging_items, staging_items_with_users_fk
from melodee_pipeline.settings import insert_missing_keys


def init_db(engine: sa.Engine) -> dict[str, list[str]]:
    """Create missing tables; add missing `staging_scan.*` keys only to a non-empty settings table.

    Idempotent. Returns what it did: {"tables": [created...], "settings": [keys added...]}.
    """
    with engine.begin() as conn:
        # Serialise concurrent `db init`s so two of them cannot race on CREATE TABLE.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('melodee-pipeline db init'))"))
        existing = set(sa.inspect(conn).get_table_names())
        created = []
        for table in metadata.sorted_tables:
            if table.name in existing:
                continue
            if table is staging_items and "users" in existing:
                table = staging_items_with_users_fk()
            table.create(conn)
            created.append(table.name)
        added = insert_missing_keys(conn)
    return {"tables": created, "settings": added}
