//! ScaiWave: team messaging over the `scai-stream` realtime engine.
//!
//! Modules by domain: [`rooms`] (rooms, membership, power levels), [`messages`] (send,
//! history, edits, redactions, reactions, read markers), [`presence`] (typing, presence),
//! [`sync`] (`/v1/sync` long-poll), [`stream`] (`/v1/stream` WebSocket), [`events`] (wire
//! envelope, visibility, the engine's event source), [`db`] (SQLite/MariaDB schema and the
//! position counter), [`app`] (state, auth, router), [`client`] (reference client),
//! [`bench`] (benchmark).

pub mod app;
pub mod bench;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod messages;
pub mod presence;
pub mod rooms;
pub mod shared_presence;
pub mod stream;
pub mod sync;
