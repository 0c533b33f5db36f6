-- ScaiDrive schema v4 (SQLite): per-tenant change-log retention and per-device sync
-- preferences. Same columns and keys as migrations/mysql/0004_sync_settings.sql.
-- NULL retention = the process default (SCAIDRIVE_CHANGELOG_RETENTION_DAYS).
ALTER TABLE tenants ADD COLUMN change_log_retention_days INTEGER;
-- One row per (tenant, device); the device belongs to user_id. List columns hold JSON arrays
-- (at most 8000 characters each, checked by the API).
CREATE TABLE sync_preferences (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    conflict_resolution TEXT NOT NULL,
    ignore_patterns TEXT NOT NULL,
    excluded_folder_ids TEXT NOT NULL,
    upload_bytes_per_sec INTEGER,
    download_bytes_per_sec INTEGER,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);
