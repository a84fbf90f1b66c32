//! The topic between ingestion and the runner: in-process by default; the
//! [`Topic`] trait is what a broker (NATS JetStream) implements.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::BoxError;
use crate::model::{Notification, SourceId};
use crate::time::Timestamp;

/// What ingestion tells the runner.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// An update was stored.
    Notification(Notification),
    /// A source has delivered everything up to a commit time (a heartbeat,
    /// a transaction commit, the end of a batch).
    Watermark {
        /// The source.
        source: SourceId,
        /// The commit time delivered.
        time: Timestamp,
    },
}

/// Carries messages from ingestion to the runner, in order per source.
#[async_trait]
pub trait Topic: Send + Sync + Debug + 'static {
    /// Publishes messages; returns once the topic holds them.
    async fn publish(&self, messages: Vec<Message>) -> Result<(), BoxError>;

    /// Takes up to `max` available messages without waiting (empty if none).
    async fn poll(&self, max: usize) -> Result<Vec<Message>, BoxError>;

    /// Waits until a message may be available.
    async fn wait(&self);
}

/// The in-process topic: a queue in memory.
#[derive(Debug, Default)]
pub struct InProcessTopic {
    queue: Mutex<VecDeque<Message>>,
    notify: tokio::sync::Notify,
}

impl InProcessTopic {
    /// An empty topic.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Topic for InProcessTopic {
    async fn publish(&self, messages: Vec<Message>) -> Result<(), BoxError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.queue
            .lock()
            .map_err(|_| "topic lock poisoned")?
            .extend(messages);
        self.notify.notify_one();
        Ok(())
    }

    async fn poll(&self, max: usize) -> Result<Vec<Message>, BoxError> {
        let mut q = self.queue.lock().map_err(|_| "topic lock poisoned")?;
        let n = q.len().min(max);
        Ok(q.drain(..n).collect())
    }

    async fn wait(&self) {
        let pending = self.queue.lock().map(|q| !q.is_empty()).unwrap_or(true);
        if !pending {
            self.notify.notified().await;
        }
    }
}
