//! Splits the body of `PUT /api/v1/crates/new` as it streams in: a u32
//! little-endian length, that many bytes of JSON metadata, another u32 LE
//! length, that many bytes of `.crate`, and nothing after. Pure, no I/O: the
//! caller feeds chunks and gets the metadata whole and the `.crate` in
//! pieces, so the archive never has to sit in memory.

use bytes::Bytes;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("the publish metadata is {declared} bytes; the limit is {limit}")]
    MetadataTooLarge { declared: u64, limit: u64 },
    #[error("the .crate is {declared} bytes; the limit is {limit}")]
    CrateTooLarge { declared: u64, limit: u64 },
    #[error(
        "the body ended inside {part}: {received} of {expected} bytes arrived (cargo's framing is a u32 LE length, the JSON metadata, a u32 LE length, the .crate)"
    )]
    Truncated { part: &'static str, expected: u64, received: u64 },
    #[error("the body goes on after the .crate its framing announced")]
    TrailingData,
}

impl FramingError {
    /// Whether the error is about size (HTTP 413) rather than shape (400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, FramingError::MetadataTooLarge { .. } | FramingError::CrateTooLarge { .. })
    }
}

/// What the body yielded so far.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// The whole JSON metadata.
    Metadata(Bytes),
    /// The `.crate` begins; it will be this many bytes.
    CrateStart(u64),
    CrateData(Bytes),
    /// The `.crate` is complete.
    CrateEnd,
}

#[derive(Debug)]
enum Stage {
    MetadataLength,
    Metadata(u64),
    CrateLength,
    Crate { expected: u64, remaining: u64 },
    Done,
}

/// The framing parser; feed it every chunk, then call [`Self::finish`].
#[derive(Debug)]
pub struct PublishFrameReader {
    stage: Stage,
    /// Bytes of the current length prefix or metadata, until complete.
    pending: Vec<u8>,
    max_metadata: u64,
    max_crate: u64,
}

impl PublishFrameReader {
    pub fn new(max_metadata: u64, max_crate: u64) -> Self {
        PublishFrameReader { stage: Stage::MetadataLength, pending: Vec::new(), max_metadata, max_crate }
    }

    pub fn feed(&mut self, mut chunk: Bytes) -> Result<Vec<FrameEvent>, FramingError> {
        let mut events = Vec::new();
        while !chunk.is_empty() {
            match self.stage {
                Stage::MetadataLength | Stage::CrateLength => {
                    let take = (4 - self.pending.len()).min(chunk.len());
                    self.pending.extend_from_slice(&chunk.split_to(take));
                    if self.pending.len() < 4 {
                        continue;
                    }
                    let mut raw = [0u8; 4];
                    raw.copy_from_slice(&self.pending);
                    self.pending.clear();
                    let length = u64::from(u32::from_le_bytes(raw));
                    if matches!(self.stage, Stage::MetadataLength) {
                        if length > self.max_metadata {
                            return Err(FramingError::MetadataTooLarge { declared: length, limit: self.max_metadata });
                        }
                        self.stage = Stage::Metadata(length);
                        if length == 0 {
                            events.push(FrameEvent::Metadata(Bytes::new()));
                            self.stage = Stage::CrateLength;
                        }
                    } else {
                        if length > self.max_crate {
                            return Err(FramingError::CrateTooLarge { declared: length, limit: self.max_crate });
                        }
                        events.push(FrameEvent::CrateStart(length));
                        self.stage = Stage::Crate { expected: length, remaining: length };
                        if length == 0 {
                            events.push(FrameEvent::CrateEnd);
                            self.stage = Stage::Done;
                        }
                    }
                }
                Stage::Metadata(length) => {
                    let missing = length as usize - self.pending.len();
                    let take = missing.min(chunk.len());
                    self.pending.extend_from_slice(&chunk.split_to(take));
                    if self.pending.len() as u64 == length {
                        events.push(FrameEvent::Metadata(Bytes::from(std::mem::take(&mut self.pending))));
                        self.stage = Stage::CrateLength;
                    }
                }
                Stage::Crate { expected, remaining } => {
                    let take = remaining.min(chunk.len() as u64) as usize;
                    events.push(FrameEvent::CrateData(chunk.split_to(take)));
                    let remaining = remaining - take as u64;
                    self.stage = Stage::Crate { expected, remaining };
                    if remaining == 0 {
                        events.push(FrameEvent::CrateEnd);
                        self.stage = Stage::Done;
                    }
                }
                Stage::Done => return Err(FramingError::TrailingData),
            }
        }
        Ok(events)
    }

    /// The body ended: it must have ended right after the `.crate`.
    pub fn finish(self) -> Result<(), FramingError> {
        let received = self.pending.len() as u64;
        match self.stage {
            Stage::Done => Ok(()),
            Stage::MetadataLength => {
                Err(FramingError::Truncated { part: "the metadata length", expected: 4, received })
            }
            Stage::Metadata(expected) => Err(FramingError::Truncated { part: "the metadata", expected, received }),
            Stage::CrateLength => Err(FramingError::Truncated { part: "the .crate length", expected: 4, received }),
            Stage::Crate { expected, remaining } => {
                Err(FramingError::Truncated { part: "the .crate", expected, received: expected - remaining })
            }
        }
    }
}

/// Frames a publish body (for tests and tools).
pub fn encode(metadata: &[u8], crate_bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + metadata.len() + crate_bytes.len());
    body.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    body.extend_from_slice(metadata);
    body.extend_from_slice(&(crate_bytes.len() as u32).to_le_bytes());
    body.extend_from_slice(crate_bytes);
    body
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feeds `body` in chunks of `size` and collects the metadata and crate.
    fn split(body: &[u8], size: usize) -> Result<(Vec<u8>, Vec<u8>), FramingError> {
        let mut reader = PublishFrameReader::new(1024, 1024);
        let (mut metadata, mut krate, mut ended, mut announced) = (Vec::new(), Vec::new(), false, 0);
        for piece in body.chunks(size) {
            for event in reader.feed(Bytes::copy_from_slice(piece))? {
                match event {
                    FrameEvent::Metadata(m) => metadata = m.to_vec(),
                    FrameEvent::CrateStart(n) => announced = n,
                    FrameEvent::CrateData(d) => krate.extend_from_slice(&d),
                    FrameEvent::CrateEnd => ended = true,
                }
            }
        }
        reader.finish()?;
        assert!(ended);
        assert_eq!(announced as usize, krate.len());
        Ok((metadata, krate))
    }

    #[test]
    fn any_chunking_yields_the_same_parts() {
        let body = encode(br#"{"name":"a"}"#, b"crate bytes");
        for size in [1, 2, 3, 5, 7, 64, body.len()] {
            let (metadata, krate) = split(&body, size).unwrap();
            assert_eq!(metadata, br#"{"name":"a"}"#);
            assert_eq!(krate, b"crate bytes");
        }
    }

    #[test]
    fn malformed_frames() {
        let body = encode(b"{}", b"abc");
        assert_eq!(
            split(&body[..2], 1).unwrap_err(),
            FramingError::Truncated { part: "the metadata length", expected: 4, received: 2 }
        );
        assert_eq!(
            split(&body[..5], 2).unwrap_err(),
            FramingError::Truncated { part: "the metadata", expected: 2, received: 1 }
        );
        assert_eq!(
            split(&body[..7], 2).unwrap_err(),
            FramingError::Truncated { part: "the .crate length", expected: 4, received: 1 }
        );
        assert_eq!(
            split(&body[..11], 4).unwrap_err(),
            FramingError::Truncated { part: "the .crate", expected: 3, received: 1 }
        );
        let mut long = body.clone();
        long.push(0);
        assert_eq!(split(&long, 3).unwrap_err(), FramingError::TrailingData);
        let huge_metadata = [u32::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat();
        assert!(split(&huge_metadata, 64).unwrap_err().is_too_large());
        let huge_crate = [2u32.to_le_bytes().to_vec(), b"{}".to_vec(), 5000u32.to_le_bytes().to_vec()].concat();
        assert_eq!(split(&huge_crate, 64).unwrap_err(), FramingError::CrateTooLarge { declared: 5000, limit: 1024 });
        assert!(split(&[], 1).is_err(), "an empty body is truncated");
    }
}
