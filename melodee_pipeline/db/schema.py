"""The Melodee tables this pipeline reads and writes (SPEC §2).

Only the columns named in the SPEC are declared, so a real Melodee database with more columns
works unchanged; `init_db` creates missing tables only and never alters existing ones.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(500), nullable=False, unique=True),
    sa.Column("value", sa.Text),
    sa.Column("category", sa.Integer, nullable=True),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

libraries = sa.Table(
    "libraries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("type", sa.String(50), nullable=False),
    sa.Column("is_locked", sa.Boolean, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("track_count", sa.Integer, server_default="0"),
    sa.Column("album_count", sa.Integer, server_default="0"),
    sa.Column("duration", sa.BigInteger, server_default="0"),
    sa.CheckConstraint("type IN ('inbound','staging','production')", name="libraries_type_check"),
)

STAGING_STATUSES = ("pending_review", "approved", "rejected")

staging_items = sa.Table(
    "staging_items",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("scan_id", sa.Text, nullable=False, index=True),
    sa.Column("staging_path", sa.Text, nullable=False, unique=True),
    sa.Column("metadata_file", sa.Text, nullable=False),
    sa.Column("artist_name", sa.Text, nullable=False),
    sa.Column("album_name", sa.Text, nullable=False),
    sa.Column("track_count", sa.Integer, server_default="0"),
    sa.Column("total_size", sa.BigInteger, server_default="0"),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(50), nullable=False, index=True),
    sa.Column("reviewed_by", sa.BigInteger, nullable=True),
    sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("notes", sa.Text),
    sa.Column("checksum", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.CheckConstraint(
        "status IN ('pending_review','approved','rejected')", name="staging_items_status_check"
    ),
)


def init_db(engine: sa.Engine) -> dict[str, list[str]]:
    """Create missing tables and insert missing default settings. Idempotent.

    Returns what it did: {"tables": [created...], "settings": [inserted keys...]}.
    """
    from melodee_pipeline.settings import insert_missing_defaults

    with engine.begin() as conn:
        # Serialise concurrent `db init`s so two of them cannot race on CREATE TABLE.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('melodee-pipeline db init'))"))
        existing = set(sa.inspect(conn).get_table_names())
        metadata.create_all(conn, checkfirst=True)
        created = [t.name for t in metadata.sorted_tables if t.name not in existing]
        inserted = insert_missing_defaults(conn)
    return {"tables": created, "settings": inserted}
