-- ScaiDrive schema v1 (SQLite). Same tables and indexes as migrations/mysql/0001_init.sql.
-- Every table is keyed by tenant_id first: every query filters by tenant.
CREATE TABLE tenants (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    max_file_size_bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE users (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    email TEXT,
    name TEXT,
    is_active INTEGER NOT NULL DEFAULT 1,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE shares (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    share_type TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    root_folder_id TEXT NOT NULL,
    quota_bytes INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE share_members (
    tenant_id TEXT NOT NULL,
    share_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, share_id, user_id)
);
CREATE INDEX share_members_user ON share_members (tenant_id, user_id, share_id);
CREATE TABLE nodes (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    share_id TEXT NOT NULL,
    parent_id TEXT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    live_name TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    mime_type TEXT,
    checksum_sha256 TEXT,
    version INTEGER NOT NULL DEFAULT 0,
    version_id TEXT,
    owner_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    modified_by TEXT NOT NULL,
    modified_at INTEGER NOT NULL,
    is_deleted INTEGER NOT NULL DEFAULT 0,
    deleted_at INTEGER,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX nodes_sibling_name ON nodes (tenant_id, parent_id, live_name);
CREATE INDEX nodes_children ON nodes (tenant_id, parent_id, is_deleted, name, id);
CREATE TABLE versions (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    version_number INTEGER NOT NULL,
    size INTEGER NOT NULL,
    checksum_sha256 TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    manifest BLOB NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX versions_file ON versions (tenant_id, file_id, version_number);
CREATE TABLE chunks (
    tenant_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    refcount INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, hash)
);
CREATE INDEX chunks_gc ON chunks (refcount, last_seen);
CREATE TABLE upload_sessions (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    share_id TEXT NOT NULL,
    folder_id TEXT NOT NULL,
    file_id TEXT,
    file_name TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    mime_type TEXT NOT NULL,
    checksum_sha256 TEXT,
    status TEXT NOT NULL,
    result_file_id TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX upload_sessions_activity ON upload_sessions (status, last_activity_at);
CREATE TABLE upload_parts (
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, session_id, idx)
);
CREATE INDEX upload_parts_hash ON upload_parts (tenant_id, hash);
