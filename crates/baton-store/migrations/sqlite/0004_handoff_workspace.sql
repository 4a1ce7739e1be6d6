-- What a workspace transfer will do (plan) and did (final path, counts, entries left out), each
-- sealed by the target for the session's clients: opaque to the server.
ALTER TABLE handoffs ADD COLUMN workspace BLOB;
ALTER TABLE handoffs ADD COLUMN plan BLOB;
