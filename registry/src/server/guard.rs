//! Refuses request paths that could step outside what they name: `..` and
//! `.` segments (also percent-encoded), NUL and backslashes, and encoded
//! slashes except in an npm scoped name (`@scope%2fname`) and in the
//! package segment of the management API (a Go module path
//! `example.com%2Fm`, a generic `namespace%2Fpackage`), where the format's
//! own name rules then apply.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ErrorStyle};

pub async fn reject_unsafe_paths(request: Request, next: Next) -> Response {
    if let Err(reason) = check_path(request.uri().path()) {
        return ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request path: {reason}"), ErrorStyle::Json)
            .into_response();
    }
    next.run(request).await
}

pub fn check_path(path: &str) -> Result<(), &'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    // `/api/v1/repositories/{repo}/packages/{format}/{package}/…`
    let admin_package = matches!(segments.as_slice(), ["", "api", "v1", "repositories", _, "packages", _, _, ..]);
    for (index, raw) in segments.iter().enumerate() {
        // Most segments have no escapes: check them without allocating.
        let decoded: std::borrow::Cow<'_, [u8]> = if raw.contains('%') {
            percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>().into()
        } else {
            raw.as_bytes().into()
        };
        if decoded.contains(&0) {
            return Err("it contains a NUL byte");
        }
        if decoded.contains(&b'\\') {
            return Err("it contains a backslash");
        }
        if *decoded == *b"." || *decoded == *b".." {
            return Err("it contains a . or .. segment");
        }
        if decoded.contains(&b'/') {
            let mut parts = decoded.split(|b| *b == b'/');
            let scoped = decoded.first() == Some(&b'@')
                && parts.clone().count() == 2
                && parts.all(|p| !p.is_empty() && p != b"." && p != b".." && p != b"@");
            let package_name = admin_package
                && index == 7
                && decoded.split(|b| *b == b'/').all(|p| !p.is_empty() && p != b"." && p != b"..");
            if !scoped && !package_name {
                return Err("it contains an encoded slash");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_path;

    #[test]
    fn paths() {
        assert!(check_path("/npm/main/@acme%2ftools").is_ok());
        assert!(check_path("/npm/main/left-pad/-/left-pad-1.0.0.tgz").is_ok());
        assert!(check_path("/pypi/main/simple/demo/").is_ok());
        assert!(check_path("/api/v1/repositories/main/packages/go/example.com%2FAcme%2Fm/versions/v1.0.0").is_ok());
        for bad in [
            "/npm/main/../x",
            "/npm/main/%2e%2e/x",
            "/npm/main/%2E%2e",
            "/npm/main/.",
            "/pypi/main/files/a%2fb/1/x",
            "/npm/main/@acme%2f..",
            "/npm/main/@acme%2fa%2fb",
            "/npm/main/a%00b",
            "/npm/main/a%5cb",
            "/api/v1/repositories/main/packages/go/example.com%2F..%2Fm/versions/v1.0.0",
            "/api/v1/repositories/main%2Fx/packages/npm/m/versions/v1.0.0",
            "/api/v1/repositories/main/packages/go/m/versions/v1.0.0%2F..",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
