//! Streaming split of an npm publish body: the JSON document with every
//! `_attachments.*.data` string cut out and base64-decoded on the fly.
//! Pure, no I/O.
//!
//! npm sends the tarball base64-encoded inside the JSON document, so a
//! plain JSON parser would hold the whole artifact (4/3 of it) in memory.
//! This splitter keeps only the document's "skeleton" (the attachment data
//! replaced by `""`) and hands the decoded tarball bytes out as they come.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Attachments one publish document may carry: npm sends the tarball of
/// the one version it publishes.
const MAX_ATTACHMENTS: usize = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error("the publish document is not valid JSON near byte {0}")]
    Syntax(u64),
    #[error("the publish document without its attachments exceeds {0} bytes")]
    MetadataTooLarge(usize),
    #[error("attachment data is not valid base64")]
    Base64,
    #[error("the publish document ended early")]
    Truncated,
    #[error(
        "the publish document has more than one attachment (a second one, {0}, starts at byte {1}); npm publishes \
         exactly one tarball per version"
    )]
    ExtraAttachment(String, u64),
}

/// What a chunk of input produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// An attachment's data begins; its key in `_attachments`.
    AttachmentStart(String),
    /// Decoded attachment bytes.
    AttachmentData(Vec<u8>),
    AttachmentEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    Object { expect_key: bool },
    Array,
}

#[derive(Debug)]
enum Lex {
    /// Between tokens, or inside a number or literal.
    Structure,
    /// Inside a string; `capture` says what to do with its bytes.
    String { escaped: bool, capture: Capture },
}

#[derive(Debug)]
enum Capture {
    /// An object key: keep it to know where we are.
    Key(Vec<u8>),
    /// An ordinary string value: copy it to the skeleton.
    Copy,
    /// Attachment data: decode it, keep it out of the skeleton.
    Attachment,
}

pub struct PublishBodySplitter {
    skeleton: Vec<u8>,
    max_skeleton: usize,
    stack: Vec<Frame>,
    /// The last key read at each object depth.
    keys: Vec<Vec<u8>>,
    lex: Lex,
    pending_base64: Vec<u8>,
    offset: u64,
    /// Attachments whose data has started.
    attachments: usize,
}

impl PublishBodySplitter {
    pub fn new(max_skeleton: usize) -> Self {
        PublishBodySplitter {
            skeleton: Vec::new(),
            max_skeleton,
            stack: Vec::new(),
            keys: Vec::new(),
            lex: Lex::Structure,
            pending_base64: Vec::new(),
            offset: 0,
            attachments: 0,
        }
    }

    /// Feeds the next chunk of the body; returns what it produced.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SplitError> {
        let mut events = Vec::new();
        let mut run_start = 0;
        for (i, &byte) in chunk.iter().enumerate() {
            self.offset += 1;
            match &mut self.lex {
                Lex::String { escaped, capture } => {
                    if *escaped {
                        *escaped = false;
                        if let Capture::Key(key) = capture {
                            key.push(byte);
                        }
                        continue;
                    }
                    match byte {
                        b'\\' => {
                            if matches!(capture, Capture::Attachment) {
                                return Err(SplitError::Base64);
                            }
                            *escaped = true;
                            if let Capture::Key(key) = capture {
                                key.push(byte);
                            }
                        }
                        b'"' => {
                            let capture = std::mem::replace(capture, Capture::Copy);
                            self.lex = Lex::Structure;
                            match capture {
                                Capture::Key(key) => {
                                    if let Some(last) = self.keys.last_mut() {
                                        *last = key;
                                    }
                                    if let Some(Frame::Object { expect_key }) = self.stack.last_mut() {
                                        *expect_key = false;
                                    }
                                }
                                Capture::Attachment => {
                                    self.flush_base64(&mut events, true)?;
                                    events.push(Event::AttachmentEnd);
                                    // Resume copying at the closing quote.
                                    run_start = i;
                                }
                                Capture::Copy => {}
                            }
                        }
                        _ => match capture {
                            Capture::Key(key) => key.push(byte),
                            Capture::Attachment => {
                                if !byte.is_ascii_whitespace() {
                                    self.pending_base64.push(byte);
                                }
                            }
                            Capture::Copy => {}
                        },
                    }
                }
                Lex::Structure => match byte {
                    b'{' => {
                        self.stack.push(Frame::Object { expect_key: true });
                        self.keys.push(Vec::new());
                    }
                    b'[' => self.stack.push(Frame::Array),
                    b'}' => {
                        if !matches!(self.stack.pop(), Some(Frame::Object { .. })) {
                            return Err(SplitError::Syntax(self.offset));
                        }
                        self.keys.pop();
                    }
                    b']' => match self.stack.pop() {
                        Some(Frame::Array) => {}
                        _ => return Err(SplitError::Syntax(self.offset)),
                    },
                    b',' => {
                        if let Some(Frame::Object { expect_key }) = self.stack.last_mut() {
                            *expect_key = true;
                        }
                    }
                    b'"' => {
                        let capture = match self.stack.last() {
                            Some(Frame::Object { expect_key: true }) => Capture::Key(Vec::new()),
                            _ if self.at_attachment_data() => Capture::Attachment,
                            _ => Capture::Copy,
                        };
                        if matches!(capture, Capture::Attachment) {
                            // Refused before a byte of it is handed out, so
                            // a document of thousands of attachments stages
                            // at most one.
                            if self.attachments == MAX_ATTACHMENTS {
                                let name = String::from_utf8_lossy(&self.keys[1]).into_owned();
                                return Err(SplitError::ExtraAttachment(name, self.offset));
                            }
                            self.attachments += 1;
                            // Copy up to and including the opening quote.
                            self.copy(&chunk[run_start..=i])?;
                            run_start = i + 1;
                            let name = String::from_utf8_lossy(&self.keys[1]).into_owned();
                            events.push(Event::AttachmentStart(name));
                        }
                        self.lex = Lex::String { escaped: false, capture };
                    }
                    _ => {}
                },
            }
            if let Lex::String { capture: Capture::Attachment, .. } = self.lex
                && self.pending_base64.len() >= 64 * 1024
            {
                self.flush_base64(&mut events, false)?;
            }
        }
        if !matches!(self.lex, Lex::String { capture: Capture::Attachment, .. }) {
            self.copy(&chunk[run_start..])?;
        } else {
            self.flush_base64(&mut events, false)?;
        }
        Ok(events)
    }

    /// Ends the body; returns the skeleton document.
    pub fn finish(self) -> Result<Vec<u8>, SplitError> {
        if !self.stack.is_empty() || !matches!(self.lex, Lex::Structure) {
            return Err(SplitError::Truncated);
        }
        Ok(self.skeleton)
    }

    /// A string value at `_attachments.<name>.data` of the root object.
    fn at_attachment_data(&self) -> bool {
        self.stack.len() == 3
            && self.stack.iter().all(|f| matches!(f, Frame::Object { .. }))
            && self.keys[0] == b"_attachments"
            && self.keys[2] == b"data"
    }

    fn copy(&mut self, bytes: &[u8]) -> Result<(), SplitError> {
        if self.skeleton.len() + bytes.len() > self.max_skeleton {
            return Err(SplitError::MetadataTooLarge(self.max_skeleton));
        }
        self.skeleton.extend_from_slice(bytes);
        Ok(())
    }

    fn flush_base64(&mut self, events: &mut Vec<Event>, last: bool) -> Result<(), SplitError> {
        let usable = if last { self.pending_base64.len() } else { self.pending_base64.len() / 4 * 4 };
        if usable == 0 {
            return Ok(());
        }
        let decoded = STANDARD.decode(&self.pending_base64[..usable]).map_err(|_| SplitError::Base64)?;
        self.pending_base64.drain(..usable);
        events.push(Event::AttachmentData(decoded));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Attachments = Vec<(String, Vec<u8>)>;

    fn split(body: &[u8], chunk: usize) -> Result<(serde_json::Value, Attachments), SplitError> {
        let mut splitter = PublishBodySplitter::new(1 << 20);
        let mut attachments: Attachments = Vec::new();
        for part in body.chunks(chunk) {
            for event in splitter.feed(part)? {
                match event {
                    Event::AttachmentStart(name) => attachments.push((name, Vec::new())),
                    Event::AttachmentData(bytes) => attachments.last_mut().unwrap().1.extend(bytes),
                    Event::AttachmentEnd => {}
                }
            }
        }
        let skeleton = splitter.finish()?;
        Ok((serde_json::from_slice(&skeleton).unwrap(), attachments))
    }

    fn body(data: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "_id": "@acme/tools",
            "name": "@acme/tools",
            "description": "has \"quotes\" and a \\ backslash {",
            "versions": {"1.0.0": {"name": "@acme/tools", "version": "1.0.0", "keywords": ["a", "b"], "x": {}}},
            "dist-tags": {"latest": "1.0.0"},
            "_attachments": {"tools-1.0.0.tgz": {"content_type": "application/octet-stream", "data": STANDARD.encode(data), "length": data.len()}}
        }))
        .unwrap()
    }

    #[test]
    fn splits_at_every_chunk_size() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let body = body(&data);
        for chunk in [1, 2, 3, 7, 64, 4096, body.len()] {
            let (skeleton, attachments) = split(&body, chunk).unwrap();
            assert_eq!(attachments.len(), 1, "chunk {chunk}");
            assert_eq!(attachments[0].0, "tools-1.0.0.tgz");
            assert_eq!(attachments[0].1, data, "chunk {chunk}");
            assert_eq!(skeleton["_attachments"]["tools-1.0.0.tgz"]["data"], "");
            assert_eq!(skeleton["_attachments"]["tools-1.0.0.tgz"]["length"], 5000);
            assert_eq!(skeleton["description"], "has \"quotes\" and a \\ backslash {");
            assert_eq!(skeleton["versions"]["1.0.0"]["keywords"][1], "b");
        }
    }

    #[test]
    fn only_attachment_data_is_cut() {
        let body = br#"{"data":"keep","versions":{"1.0.0":{"data":"keep"}},"_attachments":{}}"#;
        let (skeleton, attachments) = split(body, 5).unwrap();
        assert!(attachments.is_empty());
        assert_eq!(skeleton["data"], "keep");
        assert_eq!(skeleton["versions"]["1.0.0"]["data"], "keep");
    }

    #[test]
    fn a_second_attachment_is_refused_before_any_of_its_data() {
        let body = br#"{"_attachments":{"a.tgz":{"data":"AAAA"},"b.tgz":{"data":"QkJC"}}}"#;
        let mut splitter = PublishBodySplitter::new(1 << 20);
        let mut events = Vec::new();
        let mut refused = None;
        for byte in body.chunks(1) {
            match splitter.feed(byte) {
                Ok(more) => events.extend(more),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let refused = refused.expect("the second attachment is refused");
        assert!(matches!(&refused, SplitError::ExtraAttachment(name, _) if name == "b.tgz"), "{refused}");
        assert!(refused.to_string().contains("more than one attachment"), "{refused}");
        assert_eq!(events.iter().filter(|e| matches!(e, Event::AttachmentStart(_))).count(), 1);
        assert!(!events.contains(&Event::AttachmentData(b"BBB".to_vec())), "{events:?}");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(split(br#"{"a":[1,2}"#, 3).unwrap_err(), SplitError::Syntax(10));
        assert_eq!(split(br#"{"a":"b"#, 3).unwrap_err(), SplitError::Truncated);
        let bad = br#"{"_attachments":{"x.tgz":{"data":"!!!!"}}}"#;
        assert_eq!(split(bad, 100).unwrap_err(), SplitError::Base64);
        let mut small = PublishBodySplitter::new(10);
        assert_eq!(small.feed(br#"{"description":"long enough"}"#).unwrap_err(), SplitError::MetadataTooLarge(10));
    }
}
