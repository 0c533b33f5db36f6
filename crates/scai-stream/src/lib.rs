//! The realtime engine shared by the Scai products (ScaiWave now, ScaiDrive's sockets later).
//!
//! It knows nothing about rooms or files: a product hands it [`Delivery`] values carrying its
//! own payload type, each tagged with a tenant, an optional tenant-wide stream position and an
//! [`Audience`]. The engine then
//! - re-establishes position order per tenant ([`hub`]: a reorder buffer that fills gaps from
//!   the product's store through [`EventSource`] when a broker message is late or lost),
//! - fans each event out to the sessions that may see it, through bounded per-connection
//!   queues that drop (and count) rather than stall the fan-out ([`queue`]),
//! - runs WebSocket sessions: hello, protocol-level pings with a pong deadline, the close codes,
//!   duplicate-connection takeover, catch-up from a position ([`session`]),
//! - carries events between replicas through a [`broker::Broker`]: in-process or NATS JetStream.

pub mod broker;
pub mod catchup;
pub mod error;
pub mod hub;
pub mod position;
pub mod queue;
pub mod ratelimit;
pub mod session;

pub use catchup::EventSource;
pub use error::StreamError;
pub use hub::{Hub, HubConfig, MetricNames};
pub use position::{Audience, BusMessage, Delivery};

/// What a payload needs to travel through the engine: serialisable for the socket and the
/// broker, cheap enough to clone for buffering.
pub trait Payload:
    serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static
{
}
impl<T> Payload for T where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static
{
}
