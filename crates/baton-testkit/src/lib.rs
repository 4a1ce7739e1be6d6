//! Test kit for provider tests: a model server on loopback and the pinned provider CLIs.
