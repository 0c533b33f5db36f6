//! NATS JetStream broker. Messages go to `<prefix>.<tenant>` (tenant-scoped subjects) on one
//! stream; each replica reads the whole stream with an ordered ephemeral consumer that starts
//! at "new" messages. JetStream gives every replica the same order per subject; the hub's
//! reorder buffer restores position order across publishers anyway, so the broker only has to
//! be reliable, not globally ordered. The stream keeps messages briefly (`max_age`): the
//! database, not the broker, is the record.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, stream::StorageType};
use async_trait::async_trait;
use futures::StreamExt;

use super::Broker;
use crate::hub::Hub;
use crate::{BusMessage, Payload, StreamError};

pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    prefix: String,
}

fn err(e: impl std::fmt::Display) -> StreamError {
    StreamError::Broker(e.to_string())
}

/// Subject tokens may not hold `.`, `*`, `>` or whitespace.
fn subject_token(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl NatsBroker {
    /// Connect and make sure the stream exists (`stream` captures `<prefix>.>`).
    pub async fn connect(
        url: &str,
        stream: &str,
        prefix: &str,
        max_age: Duration,
    ) -> Result<Self, StreamError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(err)?;
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(jetstream::stream::Config {
            name: stream.to_string(),
            subjects: vec![format!("{prefix}.>")],
            max_age,
            storage: StorageType::Memory,
            ..Default::default()
        })
        .await
        .map_err(err)?;
        Ok(NatsBroker {
            client,
            js,
            stream: stream.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

#[async_trait]
impl<E: Payload> Broker<E> for NatsBroker {
    async fn start(&self, hub: Hub<E>) -> Result<(), StreamError> {
        let js = self.js.clone();
        let stream_name = self.stream.clone();
        let filter = format!("{}.>", self.prefix);
        // Create the first consumer before returning, so that nothing published after start
        // is missed.
        let mut messages = open(&js, &stream_name, &filter).await?;
        tokio::spawn(async move {
            loop {
                match messages.next().await {
                    Some(Ok(m)) => match serde_json::from_slice::<BusMessage<E>>(&m.payload) {
                        Ok(msg) => hub.ingest(msg),
                        Err(e) => {
                            tracing::warn!(event = "ws.fanout_failed", error = %e, "ws.fanout_failed: undecodable broker message")
                        }
                    },
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::warn!(event = "ws.fanout_failed", error = %e, "ws.fanout_failed: broker consumer error");
                        }
                        // Re-open; events missed meanwhile are filled from the store by the
                        // hub's gap handling.
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            match open(&js, &stream_name, &filter).await {
                                Ok(m) => {
                                    messages = m;
                                    break;
                                }
                                Err(e) => {
                                    tracing::warn!(event = "ws.fanout_failed", error = %e, "ws.fanout_failed: broker reconnect")
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok(())
    }

    async fn publish(&self, msg: &BusMessage<E>) -> Result<(), StreamError> {
        let subject = format!("{}.{}", self.prefix, subject_token(msg.tenant()));
        let payload = serde_json::to_vec(msg)?;
        self.js
            .publish(subject, payload.into())
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn healthy(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    fn name(&self) -> &'static str {
        "nats"
    }
}

async fn open(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<jetstream::consumer::pull::Ordered, StreamError> {
    let s = js.get_stream(stream).await.map_err(err)?;
    let c = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(err)?;
    c.messages().await.map_err(err)
}
