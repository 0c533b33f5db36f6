//! Fan-out brokers: how an event published on one replica reaches the hubs of all replicas.
//! [`InProcess`] for a single process (embedded mode, tests); [`nats::NatsBroker`] (feature
//! `nats`) for production: NATS JetStream, one subject per tenant, each replica reading with
//! an ordered consumer.

use async_trait::async_trait;

use crate::hub::Hub;
use crate::{BusMessage, Payload, StreamError};

#[cfg(feature = "nats")]
pub mod nats;

mod memory;
pub use memory::InProcess;

#[async_trait]
pub trait Broker<E: Payload>: Send + Sync + 'static {
    /// Start delivering every message (from every replica, this one included) into `hub`.
    async fn start(&self, hub: Hub<E>) -> Result<(), StreamError>;
    /// Send a message to every replica's hub.
    async fn publish(&self, msg: &BusMessage<E>) -> Result<(), StreamError>;
    /// Reachability for readiness checks.
    async fn healthy(&self) -> bool;
    fn name(&self) -> &'static str;
}
