//! An upload staged by a task while the handler is still reading the
//! request body around it (npm's attachment inside its JSON document,
//! cargo's `.crate` after its metadata frame). Does storage I/O through
//! the core.

use std::sync::Arc;

use bytes::Bytes;
use futures::SinkExt;
use futures::channel::mpsc;

use super::{ApiError, ErrorStyle};
use wharf_core::{CoreError, Registry};
use wharf_storage::{BodyError, StagedBlob};

pub struct StreamedUpload {
    task: tokio::task::JoinHandle<Result<StagedBlob, CoreError>>,
    sender: mpsc::Sender<Result<Bytes, BodyError>>,
}

impl StreamedUpload {
    /// Starts staging what [`Self::send`] is given, up to `limit` bytes.
    pub fn start(registry: Arc<Registry>, limit: u64) -> Self {
        let (sender, receiver) = mpsc::channel(4);
        let task = tokio::spawn(async move { registry.stage_asset(receiver, limit).await });
        StreamedUpload { task, sender }
    }

    pub async fn send(&mut self, bytes: Bytes) {
        // A closed channel means staging failed; its error is reported
        // when the task is joined.
        let _ = self.sender.send(Ok(bytes)).await;
    }

    /// The body has ended: waits for the staged upload.
    pub async fn finish(self, style: ErrorStyle) -> Result<StagedBlob, ApiError> {
        drop(self.sender);
        self.task.await.map_err(|e| ApiError::internal(&e, style))?.map_err(|e| ApiError::from_core(e, style))
    }

    /// The request was refused: makes staging fail, so its parts are
    /// aborted, and deletes whatever was staged before the answer.
    pub async fn abort(mut self) {
        let _ = self.sender.send(Err("the request was refused".into())).await;
        drop(self.sender);
        if let Ok(Ok(staged)) = self.task.await {
            staged.discard().await;
        }
    }
}
