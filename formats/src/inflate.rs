//! A ceiling on what a compressed archive may inflate to, counted on the
//! bytes the decompressor yields rather than on what the archive's entries
//! claim: a tar reader skips a directory or link entry's declared size by
//! reading it, so a 20 GiB "directory" inside a 21 MB upload would be
//! inflated in full before any per-file sum noticed. Pure, no I/O.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

/// A reader that fails once more than its limit has been read from it.
pub struct Inflated<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

/// Says, after a read failed, whether it failed because of the limit.
#[derive(Clone)]
pub struct InflationCheck(Rc<Cell<bool>>);

impl InflationCheck {
    pub fn exceeded(&self) -> bool {
        self.0.get()
    }

    /// Why reading `what` failed, for a refusal: the limit (`limit` as
    /// people should read it) when it was passed, else the error.
    pub fn reason(&self, what: &str, error: &std::io::Error, limit: u64) -> String {
        if self.exceeded() { format!("it unpacks to more than {limit} bytes") } else { format!("{what}: {error}") }
    }
}

/// Wraps a decompressor so that reading past `limit` bytes from it fails.
pub fn limit<R: Read>(decompressor: R, limit: u64) -> (Inflated<R>, InflationCheck) {
    let exceeded = Rc::new(Cell::new(false));
    let check = InflationCheck(exceeded.clone());
    (Inflated { inner: decompressor, remaining: limit, exceeded }, check)
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        // One byte beyond the limit tells "exactly at the limit" from "over it".
        let allowed = usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX).min(out.len());
        let n = self.inner.read(&mut out[..allowed])?;
        if n as u64 > self.remaining {
            self.exceeded.set(true);
            self.remaining = 0;
            return Err(std::io::Error::other("the archive inflates past its limit"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A gzip tar that starts with a directory entry declaring `size` bytes of
/// zeros (they compress to almost nothing), then holds `files`.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub fn gzip_tar_with_huge_directory(directory: &str, size: u64, files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    assert_eq!(size % 512, 0, "no padding to write");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut header = tar::Header::new_gnu();
    header.set_path(directory).unwrap();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(size);
    header.set_cksum();
    gzip.write_all(header.as_bytes()).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(size), &mut gzip).unwrap();
    let mut builder = tar::Builder::new(gzip);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_stops_one_byte_past_the_limit() {
        let (mut exact, check) = limit(&[7u8; 100][..], 100);
        let mut out = Vec::new();
        assert_eq!(exact.read_to_end(&mut out).ok(), Some(100));
        assert!(!check.exceeded());

        let (mut over, check) = limit(std::io::repeat(0), 1000);
        let mut out = Vec::new();
        assert!(over.read_to_end(&mut out).is_err());
        assert!(check.exceeded());
        assert!(out.len() <= 1000, "{}", out.len());
    }
}
