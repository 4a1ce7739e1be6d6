//! Test kit for provider tests: a scripted model server on loopback speaking the Anthropic and OpenAI wire
//! formats ([`model`]), the pinned provider CLIs installed once into a shared cache ([`clis`]), and the per-machine
//! configuration that points those CLIs at the model server with no network ([`rig`]).
//!
//! This crate is for tests only: it must never be a dependency of the shipped binary's runtime paths (only of
//! `[dev-dependencies]`), because it writes fake credentials and runs `npm`.

pub mod clis;
pub mod model;
pub mod rig;
