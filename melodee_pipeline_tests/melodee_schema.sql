-- Melodee's own definitions of the tables this project shares with it (the Go server melodee-next,
-- its init-scripts/001_schema.sql), and the rows Melodee seeds at first start. Tests that write rows
-- run on this, not on what `db init` creates, and test_melodee_compat.py proves that `db init` on an empty
-- database creates exactly these definitions.

-- Melodee's users; `db init` never creates this table.
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    username varchar(255) UNIQUE NOT NULL,
    email varchar(255),
    password_hash varchar(255) NOT NULL,
    is_admin boolean DEFAULT false,
    created_at timestamp NOT NULL DEFAULT current_timestamp,
    last_login_at timestamp
);

CREATE TABLE IF NOT EXISTS settings (
    id serial PRIMARY KEY,
    key varchar(500) UNIQUE NOT NULL,
    value text,
    category integer,
    comment text,
    created_at timestamp NOT NULL DEFAULT current_timestamp,
    updated_at timestamp NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS libraries (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL,
    path text NOT NULL,
    type varchar(50) NOT NULL CHECK (type IN ('inbound','staging','production')),
    is_locked boolean DEFAULT false,
    created_at timestamp NOT NULL DEFAULT current_timestamp,
    track_count integer DEFAULT 0,
    album_count integer DEFAULT 0,
    duration bigint DEFAULT 0
);

CREATE TABLE IF NOT EXISTS staging_items (
    id bigserial PRIMARY KEY,
    scan_id text NOT NULL,
    staging_path text NOT NULL UNIQUE,
    metadata_file text NOT NULL,
    artist_name text NOT NULL,
    album_name text NOT NULL,
    track_count integer DEFAULT 0,
    total_size bigint DEFAULT 0,
    processed_at timestamp NOT NULL,
    status varchar(50) NOT NULL CHECK (status IN ('pending_review','approved','rejected')),
    reviewed_by bigint REFERENCES users(id),
    reviewed_at timestamp,
    notes text,
    checksum text NOT NULL,
    created_at timestamp DEFAULT current_timestamp
);
CREATE INDEX IF NOT EXISTS idx_staging_status ON staging_items (status);
CREATE INDEX IF NOT EXISTS idx_staging_scan_id ON staging_items (scan_id);
CREATE INDEX IF NOT EXISTS idx_staging_artist_album ON staging_items (artist_name, album_name);

-- Melodee's catalogue, reduced to what matters here: deleting a library deletes its rows.
CREATE TABLE IF NOT EXISTS albums (
    id bigserial PRIMARY KEY,
    library_id integer REFERENCES libraries(id) ON DELETE CASCADE,
    name varchar(255) NOT NULL,
    directory varchar(500),
    created_at timestamp NOT NULL DEFAULT current_timestamp
);
CREATE INDEX IF NOT EXISTS idx_albums_library_id ON albums (library_id);

CREATE TABLE IF NOT EXISTS tracks (
    id bigserial PRIMARY KEY,
    album_id bigint REFERENCES albums(id) ON DELETE CASCADE,
    library_id integer REFERENCES libraries(id) ON DELETE CASCADE,
    title varchar(255) NOT NULL,
    relative_path text,
    created_at timestamp NOT NULL DEFAULT current_timestamp
);
CREATE INDEX IF NOT EXISTS idx_tracks_library_id ON tracks (library_id);

-- ---------------------------------------------------------------------------------------------
-- Seeds, as Melodee writes them at first start. Settings are seeded only into an empty table.

INSERT INTO users (username, email, password_hash, is_admin)
VALUES ('admin', 'admin@localhost', 'placeholder-not-a-hash', true)
ON CONFLICT (username) DO NOTHING;

INSERT INTO settings (key, value, category, comment)
SELECT v.key, v.value, v.category, v.comment
FROM (VALUES
    ('staging_scan.enabled', 'false', 1, 'Enable scheduled scans of the inbound library into staging'),
    ('staging_scan.dry_run', 'true', 1, 'Plan the staging scan without moving files'),
    ('staging_scan.schedule', '0 */1 * * *', 1, 'Cron schedule of the staging scan'),
    ('staging_scan.workers', '4', 1, 'Parallel workers of the staging scan'),
    ('staging_scan.rate_limit', '0', 1, 'Files per second, 0 = unlimited'),
    ('staging_scan.scan_db_data_path', '/tmp/melodee-scans', 1, 'Where scan databases are written'),
    ('system.site_name', 'Melodee', 0, 'Name shown in the web interface'),
    ('processing.max_concurrent_jobs', '2', 2, 'Library processing jobs run at once')
) AS v(key, value, category, comment)
WHERE NOT EXISTS (SELECT 1 FROM settings);
