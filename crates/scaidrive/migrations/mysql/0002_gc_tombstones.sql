-- Chunk GC tombstones (see src/jobs/mod.rs): set when GC decides to delete a chunk, before
-- its bytes are removed; an upload that finds it set waits for the row to go.
ALTER TABLE chunks ADD COLUMN deleting_since BIGINT NULL;
CREATE INDEX chunks_tombstones ON chunks (deleting_since);
