-- Pending chunks of resumable uploads live under uploads/{session_id}/chunks/{index} until the
-- upload completes; `staged` = 1 marks a part whose bytes are there (0 = at its content address).
ALTER TABLE upload_parts ADD COLUMN staged BIGINT NOT NULL DEFAULT 0;
