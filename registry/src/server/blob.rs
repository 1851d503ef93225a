//! Serves an asset's bytes: streamed from storage, with `ETag`, `HEAD`
//! and single `Range` requests (uv reads wheels lazily by range).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ErrorStyle};
use wharf_core::Registry;
use wharf_storage::BlobDigests;

pub async fn serve(
    registry: &Registry,
    digests: &BlobDigests,
    content_type: &'static str,
    method: &Method,
    headers: &HeaderMap,
    style: ErrorStyle,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", digests.sha256);
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(spec) => match parse_range(spec, digests.size) {
            Some(range) => Some(range),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{}", digests.size))],
                )
                    .into_response());
            }
        },
        None => None,
    };
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, value);
    }
    let (status, length) = match &range {
        Some(r) => {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end - 1, digests.size)) {
                response_headers.insert(header::CONTENT_RANGE, value);
            }
            (StatusCode::PARTIAL_CONTENT, r.end - r.start)
        }
        None => (StatusCode::OK, digests.size),
    };
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if method == Method::HEAD {
        return Ok((status, response_headers).into_response());
    }
    let blob = registry.open_blob(digests, range).await.map_err(|e| ApiError::from_core(e, style))?;
    Ok((status, response_headers, Body::from_stream(blob.stream)).into_response())
}

/// One `bytes=` range (`a-b`, `a-`, `-n`) within `size`; `None` when it
/// cannot be satisfied. Multiple ranges are not supported.
fn parse_range(spec: &str, size: u64) -> Option<std::ops::Range<u64>> {
    let spec = spec.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let range = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            size.checked_sub(n.min(size))?..size
        }
        (start, "") => start.parse().ok()?..size,
        (start, end) => start.parse().ok()?..end.parse::<u64>().ok()?.saturating_add(1).min(size),
    };
    (range.start < range.end && range.end <= size).then_some(range)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Some(90..100));
        assert_eq!(parse_range("bytes=50-500", 100), Some(50..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
