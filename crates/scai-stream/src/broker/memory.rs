//! The in-process broker: publishing is handing the message to this process's hub.

use std::sync::OnceLock;

use async_trait::async_trait;

use super::Broker;
use crate::hub::Hub;
use crate::{BusMessage, Payload, StreamError};

pub struct InProcess<E> {
    hub: OnceLock<Hub<E>>,
}

impl<E> Default for InProcess<E> {
    fn default() -> Self {
        InProcess {
            hub: OnceLock::new(),
        }
    }
}

#[async_trait]
impl<E: Payload> Broker<E> for InProcess<E> {
    async fn start(&self, hub: Hub<E>) -> Result<(), StreamError> {
        self.hub
            .set(hub)
            .map_err(|_| StreamError::Broker("in-process broker started twice".into()))
    }

    async fn publish(&self, msg: &BusMessage<E>) -> Result<(), StreamError> {
        match self.hub.get() {
            Some(h) => {
                h.ingest(msg.clone());
                Ok(())
            }
            None => Err(StreamError::Broker("in-process broker not started".into())),
        }
    }

    async fn healthy(&self) -> bool {
        self.hub.get().is_some()
    }

    fn name(&self) -> &'static str {
        "in-process"
    }
}
