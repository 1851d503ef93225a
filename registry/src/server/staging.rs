//! A file embedded in a request body (npm's attachment inside its JSON
//! document, cargo's `.crate` after its metadata frame), staged by a task
//! while the handler is still reading the body around it. Does storage I/O
//! through the core.

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use super::{ApiError, ErrorStyle};
use wharf_core::{CoreError, Registry};
use wharf_storage::{BodyError, StagedBlob};

/// What a format's splitter finds in a chunk of the body.
pub enum Embedded {
    /// The embedded file begins, under this name.
    Start(String),
    Data(Bytes),
    End,
}

/// Reads `body` through `split` (the format's splitter, which also keeps
/// what surrounds the file), staging the embedded file as it arrives, up
/// to `max_file` bytes. A body past `max_body` is refused with
/// `too_large`. On any failure whatever was staged is deleted before the
/// answer; a file that never ended is deleted and not returned.
pub async fn stage_embedded(
    registry: &Arc<Registry>,
    body: Body,
    (max_body, max_file): (u64, u64),
    style: ErrorStyle,
    too_large: impl Fn() -> ApiError,
    mut split: impl FnMut(Bytes) -> Result<Vec<Embedded>, ApiError>,
) -> Result<Option<(String, StagedBlob)>, ApiError> {
    let mut body = body.into_data_stream();
    let mut received = 0u64;
    let mut staging: Option<(String, StreamedUpload)> = None;
    let mut streamed: Option<(String, StreamedUpload)> = None;
    let read: Result<(), ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("failed to read the request body: {e}"), style)
            })?;
            received += chunk.len() as u64;
            if received > max_body {
                return Err(too_large());
            }
            for part in split(chunk)? {
                match part {
                    Embedded::Start(name) => staging = Some((name, StreamedUpload::start(registry.clone(), max_file))),
                    Embedded::Data(bytes) => {
                        if let Some((_, upload)) = staging.as_mut() {
                            upload.send(bytes).await;
                        }
                    }
                    Embedded::End => streamed = staging.take(),
                }
            }
        }
        Ok(())
    }
    .await;
    if let Some((_, unfinished)) = staging {
        unfinished.abort().await;
    }
    match (read, streamed) {
        (Ok(()), Some((name, upload))) => Ok(Some((name, upload.finish(style).await?))),
        (Ok(()), None) => Ok(None),
        (Err(error), streamed) => {
            if let Some((_, upload)) = streamed {
                upload.abort().await;
            }
            Err(error)
        }
    }
}

struct StreamedUpload {
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
