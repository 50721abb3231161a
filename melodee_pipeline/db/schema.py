"""The Melodee tables this pipeline reads and writes, declared exactly as Melodee declares them.

A table that `db init` creates must be indistinguishable from Melodee's own (same column types,
nullability, defaults, constraint and index names), so code tested on a bootstrapped database
behaves the same on a real Melodee one. Only the columns Melodee's definition names are declared.

Timestamps are `timestamp without time zone` holding UTC (see `utcnow`).

`users` belongs to Melodee and is never created here: `staging_items.reviewed_by` references it
only when it exists at `db init` time (see `staging_items_with_users_fk`).
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

metadata = sa.MetaData()

CURRENT_TIMESTAMP = sa.text("CURRENT_TIMESTAMP")


def utcnow() -> datetime:
    """Now, as the naive UTC value a `timestamp without time zone` column stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


settings = sa.Table(
    "settings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # serial
    sa.Column("key", sa.String(500), nullable=False, unique=True),
    sa.Column("value", sa.Text),
    sa.Column("category", sa.Integer),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=False), nullable=False, server_default=CURRENT_TIMESTAMP),
    sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False, server_default=CURRENT_TIMESTAMP),
)

libraries = sa.Table(
    "libraries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # serial
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("type", sa.String(50), nullable=False),
    sa.Column("is_locked", sa.Boolean, server_default=sa.text("false")),
    sa.Column("created_at", sa.DateTime(timezone=False), nullable=False, server_default=CURRENT_TIMESTAMP),
    sa.Column("track_count", sa.Integer, server_default=sa.text("0")),
    sa.Column("album_count", sa.Integer, server_default=sa.text("0")),
    sa.Column("duration", sa.BigInteger, server_default=sa.text("0")),
    # The name Postgres gives an inline `CHECK` on this column, and the same text, so the stored
    # definition equals Melodee's.
    sa.CheckConstraint("type IN ('inbound','staging','production')", name="libraries_type_check"),
)

staging_items = sa.Table(
    "staging_items",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),  # bigserial
    sa.Column("scan_id", sa.Text, nullable=False),
    sa.Column("staging_path", sa.Text, nullable=False, unique=True),
    sa.Column("metadata_file", sa.Text, nullable=False),
    sa.Column("artist_name", sa.Text, nullable=False),
    sa.Column("album_name", sa.Text, nullable=False),
    sa.Column("track_count", sa.Integer, server_default=sa.text("0")),
    sa.Column("total_size", sa.BigInteger, server_default=sa.text("0")),
    sa.Column("processed_at", sa.DateTime(timezone=False), nullable=False),
    sa.Column("status", sa.String(50), nullable=False),
    sa.Column("reviewed_by", sa.BigInteger),
    sa.Column("reviewed_at", sa.DateTime(timezone=False)),
    sa.Column("notes", sa.Text),
    sa.Column("checksum", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=False), server_default=CURRENT_TIMESTAMP),
    sa.CheckConstraint("status IN ('pending_review','approved','rejected')", name="staging_items_status_check"),
    sa.Index("idx_staging_status", "status"),
    sa.Index("idx_staging_scan_id", "scan_id"),
    # B-tree: one entry holds at most 2704 bytes, so a longer artist + album pair cannot be stored.
    sa.Index("idx_staging_artist_album", "artist_name", "album_name"),
)

REVIEWED_BY_FK = "staging_items_reviewed_by_fkey"


def staging_items_with_users_fk() -> sa.Table:
    """`staging_items` as Melodee declares it beside its `users` table: `reviewed_by` references it.

    A separate copy in its own MetaData, with a stub `users` (never created) for the reference to
    resolve, so the shared `staging_items` stays usable on databases without `users`.
    """
    md = sa.MetaData()
    sa.Table("users", md, sa.Column("id", sa.BigInteger, primary_key=True))
    table = staging_items.to_metadata(md)
    table.append_constraint(sa.ForeignKeyConstraint(["reviewed_by"], ["users.id"], name=REVIEWED_BY_FK))
    return table
