-- ScaiDrive schema v1 (MariaDB 10.11+ / MySQL 8). Same tables and indexes as migrations/sqlite/0001_init.sql.
-- Names use utf8mb4_bin so sibling-name uniqueness and ordering match SQLite (exact, by code point).
CREATE TABLE tenants (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    max_file_size_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE users (
    tenant_id VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    email VARCHAR(320),
    name VARCHAR(255),
    is_active BIGINT NOT NULL DEFAULT 1,
    is_admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE shares (
    tenant_id VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    name VARCHAR(255) NOT NULL,
    share_type VARCHAR(16) NOT NULL,
    owner_id VARCHAR(64) NOT NULL,
    root_folder_id VARCHAR(64) NOT NULL,
    quota_bytes BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE share_members (
    tenant_id VARCHAR(64) NOT NULL,
    share_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    role VARCHAR(16) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, share_id, user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX share_members_user ON share_members (tenant_id, user_id, share_id);
CREATE TABLE nodes (
    tenant_id VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    share_id VARCHAR(64) NOT NULL,
    parent_id VARCHAR(64),
    kind VARCHAR(8) NOT NULL,
    name VARCHAR(255) NOT NULL,
    live_name VARCHAR(255),
    size BIGINT NOT NULL DEFAULT 0,
    mime_type VARCHAR(255),
    checksum_sha256 VARCHAR(64),
    version BIGINT NOT NULL DEFAULT 0,
    version_id VARCHAR(64),
    owner_id VARCHAR(64) NOT NULL,
    created_by VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL,
    modified_by VARCHAR(64) NOT NULL,
    modified_at BIGINT NOT NULL,
    is_deleted BIGINT NOT NULL DEFAULT 0,
    deleted_at BIGINT,
    PRIMARY KEY (tenant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX nodes_sibling_name ON nodes (tenant_id, parent_id, live_name);
CREATE INDEX nodes_children ON nodes (tenant_id, parent_id, is_deleted, name, id);
CREATE TABLE versions (
    tenant_id VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    file_id VARCHAR(64) NOT NULL,
    version_number BIGINT NOT NULL,
    size BIGINT NOT NULL,
    checksum_sha256 VARCHAR(64) NOT NULL,
    chunk_size BIGINT NOT NULL,
    manifest LONGBLOB NOT NULL,
    created_by VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX versions_file ON versions (tenant_id, file_id, version_number);
CREATE TABLE chunks (
    tenant_id VARCHAR(64) NOT NULL,
    hash CHAR(64) NOT NULL,
    size BIGINT NOT NULL,
    refcount BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX chunks_gc ON chunks (refcount, last_seen);
CREATE TABLE upload_sessions (
    tenant_id VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    share_id VARCHAR(64) NOT NULL,
    folder_id VARCHAR(64) NOT NULL,
    file_id VARCHAR(64),
    file_name VARCHAR(255) NOT NULL,
    file_size BIGINT NOT NULL,
    chunk_size BIGINT NOT NULL,
    total_chunks BIGINT NOT NULL,
    mime_type VARCHAR(255) NOT NULL,
    checksum_sha256 VARCHAR(64),
    status VARCHAR(16) NOT NULL,
    result_file_id VARCHAR(64),
    created_by VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL,
    last_activity_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX upload_sessions_activity ON upload_sessions (status, last_activity_at);
CREATE TABLE upload_parts (
    tenant_id VARCHAR(64) NOT NULL,
    session_id VARCHAR(64) NOT NULL,
    idx BIGINT NOT NULL,
    hash CHAR(64) NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id, idx)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX upload_parts_hash ON upload_parts (tenant_id, hash);
