-- ScaiDrive schema v2 (SQLite): sync. Same tables and indexes as migrations/mysql/0002_sync.sql.
-- change_counters holds each tenant's last handed-out change position; a change takes it
-- with an UPDATE inside the mutation's transaction, so positions are strictly increasing,
-- never reused (purging old rows leaves the counter alone) and commit in position order.
CREATE TABLE change_counters (
    tenant_id TEXT NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL,
    purged_through INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE change_log (
    tenant_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    id TEXT NOT NULL,
    share_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    change_type TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at INTEGER NOT NULL,
    old_path TEXT,
    new_path TEXT,
    version_id TEXT,
    size INTEGER,
    mime_type TEXT,
    checksum_sha256 TEXT,
    PRIMARY KEY (tenant_id, position)
);
CREATE INDEX change_log_share ON change_log (tenant_id, share_id, position);
CREATE INDEX change_log_age ON change_log (changed_at);
CREATE TABLE sync_devices (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_name TEXT NOT NULL,
    platform TEXT,
    client_version TEXT,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX sync_devices_user ON sync_devices (tenant_id, user_id);
CREATE TABLE sync_cursors (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    share_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    last_sync_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, device_id, share_id)
);
CREATE TABLE sync_conflicts (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    share_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    conflict_type TEXT NOT NULL,
    strategy TEXT NOT NULL,
    path TEXT,
    base_version_id TEXT,
    server_version_id TEXT,
    client_session_id TEXT,
    resolution TEXT,
    copy_file_id TEXT,
    created_at INTEGER NOT NULL,
    resolved_at INTEGER,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX sync_conflicts_open ON sync_conflicts (tenant_id, resource_id, resolved_at);
CREATE INDEX sync_conflicts_device ON sync_conflicts (tenant_id, device_id, created_at);
