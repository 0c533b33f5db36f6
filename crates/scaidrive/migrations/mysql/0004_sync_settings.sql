-- ScaiDrive schema v4 (MariaDB/MySQL): per-tenant change-log retention and per-device sync
-- preferences. Same columns and keys as migrations/sqlite/0004_sync_settings.sql.
-- NULL retention = the process default (SCAIDRIVE_CHANGELOG_RETENTION_DAYS).
ALTER TABLE tenants ADD COLUMN change_log_retention_days BIGINT NULL;
-- One row per (tenant, device); the device belongs to user_id. List columns hold JSON arrays
-- (at most 8000 characters each, checked by the API). VARCHAR, not TEXT: the Any driver reads
-- MariaDB TEXT columns as blobs.
CREATE TABLE sync_preferences (
    tenant_id VARCHAR(64) NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    conflict_resolution VARCHAR(32) NOT NULL,
    ignore_patterns VARCHAR(8000) NOT NULL,
    excluded_folder_ids VARCHAR(8000) NOT NULL,
    upload_bytes_per_sec BIGINT NULL,
    download_bytes_per_sec BIGINT NULL,
    paused BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
