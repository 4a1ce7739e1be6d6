-- The session status before a handoff quiesced it, so an abort after a server restart restores
-- exactly that (not a guess).
ALTER TABLE handoffs ADD COLUMN restore_status TEXT;
