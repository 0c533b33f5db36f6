-- ScaiDrive schema v2 (MariaDB/MySQL): sync. Same tables and indexes as migrations/sqlite/0002_sync.sql.
-- change_counters holds each tenant's last handed-out change position; a change takes it
-- with an UPDATE inside the mutation's transaction, so positions are strictly increasing,
-- never reused (purging old rows leaves the counter alone) and commit in position order.
CREATE TABLE change_counters (
    tenant_id VARCHAR(64) NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL,
    purged_through BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE change_log (
    tenant_id VARCHAR(64) NOT NULL,
    position BIGINT NOT NULL,
    id VARCHAR(64) NOT NULL,
    share_id VARCHAR(64) NOT NULL,
    resource_type VARCHAR(64) NOT NULL,
    resource_id VARCHAR(64) NOT NULL,
    change_type VARCHAR(64) NOT NULL,
    changed_by VARCHAR(64) NOT NULL,
    changed_at BIGINT NOT NULL,
    old_path VARCHAR(4096),
    new_path VARCHAR(4096),
    version_id VARCHAR(64),
    size BIGINT,
    mime_type VARCHAR(255),
    checksum_sha256 VARCHAR(64),
    PRIMARY KEY (tenant_id, position)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX change_log_share ON change_log (tenant_id, share_id, position);
CREATE INDEX change_log_age ON change_log (changed_at);
CREATE TABLE sync_devices (
    tenant_id VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    device_name VARCHAR(255) NOT NULL,
    platform VARCHAR(255),
    client_version VARCHAR(255),
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX sync_devices_user ON sync_devices (tenant_id, user_id);
CREATE TABLE sync_cursors (
    tenant_id VARCHAR(64) NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    share_id VARCHAR(64) NOT NULL,
    position BIGINT NOT NULL,
    last_sync_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, device_id, share_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE sync_conflicts (
    tenant_id VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    share_id VARCHAR(64) NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    resource_type VARCHAR(64) NOT NULL,
    resource_id VARCHAR(64) NOT NULL,
    conflict_type VARCHAR(64) NOT NULL,
    strategy VARCHAR(64) NOT NULL,
    path VARCHAR(4096),
    base_version_id VARCHAR(64),
    server_version_id VARCHAR(64),
    client_session_id VARCHAR(64),
    resolution VARCHAR(64),
    copy_file_id VARCHAR(64),
    created_at BIGINT NOT NULL,
    resolved_at BIGINT,
    PRIMARY KEY (tenant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX sync_conflicts_open ON sync_conflicts (tenant_id, resource_id, resolved_at);
CREATE INDEX sync_conflicts_device ON sync_conflicts (tenant_id, device_id, created_at);
