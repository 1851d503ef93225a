//! The Swift package registry at the protocol level, against the real
//! registry binary. No Swift toolchain can be installed on these machines,
//! so these tests replay exactly the requests SwiftPM's registry client
//! sends (`swift package resolve`, `swift package-registry publish`,
//! `login`, the identifiers lookup: methods, paths, `Accept` values, the
//! publish form byte for byte), check what SwiftPM checks of each answer
//! (`Content-Version: 1`, exact content types, lowercase checksums, whole-
//! second dates, `Link` entries it can parse), and validate every body
//! against the spec's schemas (registry.openapi.yaml), section by section
//! of the server spec (Registry.md).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;

use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

const CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {filesystem: {path: "{data}"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: swift}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: private}
spec:
  domainRef: {name: acme}
"#;

const JSON_V1: &str = "application/vnd.swift.registry.v1+json";
const SWIFT_V1: &str = "application/vnd.swift.registry.v1+swift";
const ZIP_V1: &str = "application/vnd.swift.registry.v1+zip";
const MANIFEST: &str =
    "// swift-tools-version:5.7\nimport PackageDescription\n\nlet package = Package(name: \"LinkedList\")\n";
const MANIFEST_58: &str = "// swift-tools-version:5.8\nimport PackageDescription\n\nlet package = Package(name: \"LinkedList\", targets: [])\n";

/// A source archive as `swift package-registry publish` builds it
/// (`zip -ry` of one folder named after the identifier, directory entries
/// included).
fn source_archive(folder: &str, manifest: &str, body: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.add_directory(folder, options).unwrap();
    zip.start_file(format!("{folder}/Package.swift"), options).unwrap();
    zip.write_all(manifest.as_bytes()).unwrap();
    zip.start_file(format!("{folder}/Package@swift-5.8.swift"), options).unwrap();
    zip.write_all(MANIFEST_58.as_bytes()).unwrap();
    zip.add_directory(format!("{folder}/Sources/LinkedList"), options).unwrap();
    zip.start_file(format!("{folder}/Sources/LinkedList/LinkedList.swift"), options).unwrap();
    zip.write_all(body.as_bytes()).unwrap();
    zip.finish().unwrap().into_inner()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The publish form byte for byte as SwiftPM writes it: quoted UUID
/// boundary, parts in order, no file names, and (in released toolchains) a
/// `quoted-printable` label on a metadata part that is raw JSON.
fn publish_body(boundary: &str, archive: &[u8], metadata: Option<&str>) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"source-archive\"\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(archive);
    if let Some(metadata) = metadata {
        body.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{metadata}")
                .as_bytes(),
        );
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

const BOUNDARY: &str = "7B4A1F2C-9D3E-4C5B-8A6F-0E1D2C3B4A59";

fn metadata_json(repository: &str) -> String {
    json!({
        "author": {"name": "Mona", "organization": {"name": "Acme", "url": "https://acme.example/?team=core"}},
        "description": "A linked list",
        "licenseURL": "https://acme.example/LICENSE?format=raw",
        "repositoryURLs": [repository, "git@git.example:acme/LinkedList.git"],
        "originalPublicationTime": "2024-01-02T03:04:05.250Z"
    })
    .to_string()
        + "\n"
}

/// `PUT {scope}/{name}/{version}` as SwiftPM sends it.
async fn publish(server: &TestServer, repo: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .put(server.url(&format!("/swift/{repo}/{path}")))
        .header("Content-Type", format!("multipart/form-data;boundary=\"{BOUNDARY}\""))
        .header("Accept", JSON_V1)
        .header("Expect", "100-continue")
        .header("Prefer", "respond-async")
        .header("User-Agent", "SwiftPackageManager/6.0.3")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn get(server: &TestServer, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = client().get(server.url(path)).header("User-Agent", "SwiftPackageManager/6.0.3");
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    request.send().await.unwrap()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

/// What SwiftPM requires of a response before it reads the body: the
/// version header (`RegistryClient` checks the exact string `1`) and a
/// content type equal to `expected` or followed by `;`, case-sensitively.
fn assert_swiftpm_accepts(headers: &HeaderMap, expected: &str) {
    assert_eq!(header(headers, "content-version"), "1", "Content-Version");
    let content_type = header(headers, "content-type");
    assert!(
        content_type == expected || content_type.starts_with(&format!("{expected};")),
        "Content-Type {content_type:?}, expected {expected}"
    );
}

/// A problem as SwiftPM parses it (a string `detail`), with the status.
async fn assert_problem(response: reqwest::Response, status: u16, detail: &str) {
    assert_eq!(response.status(), status);
    assert_swiftpm_accepts(response.headers(), "application/problem+json");
    let body: Value = response.json().await.unwrap();
    conforms(&body, &problem_schema());
    assert!(body["detail"].as_str().unwrap().contains(detail), "{body}");
}

// The schemas of registry.openapi.yaml, as the validator below reads them.

fn problem_schema() -> Value {
    json!({"type": "object", "required": ["detail"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "instance": {"type": "string"}}})
}

fn releases_schema() -> Value {
    json!({"type": "object", "required": ["releases"], "properties": {"releases": {"type": "object",
        "additionalProperties": {"type": "object", "properties": {"url": {"type": "string"}, "problem": problem_schema()}}}}})
}

fn release_schema() -> Value {
    let organization = json!({"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "email": {"type": "string"}, "description": {"type": "string"}, "url": {"type": "string"}}});
    json!({"type": "object", "required": ["id", "version", "resources", "metadata"], "properties": {
        "id": {"type": "string", "pattern": "^[a-zA-Z0-9](?:[a-zA-Z0-9]|-[a-zA-Z0-9]){0,38}\\.[a-zA-Z0-9](?:[a-zA-Z0-9]|[-_][a-zA-Z0-9]){0,99}$"},
        "version": {"type": "string"},
        "resources": {"type": "array", "items": {"type": "object", "required": ["name", "type", "checksum"], "properties": {
            "name": {"type": "string"}, "type": {"type": "string"}, "checksum": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "signing": {"type": "object", "required": ["signatureBase64Encoded", "signatureFormat"]}}}},
        "metadata": {"type": "object", "properties": {
            "author": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "email": {"type": "string"}, "description": {"type": "string"},
                "organization": organization, "url": {"type": "string"}}},
            "description": {"type": "string"}, "licenseURL": {"type": "string"}, "readmeURL": {"type": "string"},
            "repositoryURLs": {"type": "array", "items": {"type": "string"}},
            "originalPublicationTime": {"type": "string", "pattern": "^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$"}}},
        "publishedAt": {"type": "string", "pattern": "^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$"}}})
}

fn identifiers_schema() -> Value {
    json!({"type": "object", "required": ["identifiers"], "properties": {"identifiers": {"type": "array", "items": {"type": "string"}}}})
}

/// The subset of JSON Schema the spec's schemas use: types, required
/// properties, nested properties, array items, additional properties and
/// string patterns.
fn conforms(value: &Value, schema: &Value) {
    match schema["type"].as_str() {
        Some("object") => {
            let object = value.as_object().unwrap_or_else(|| panic!("expected an object for {schema} in {value}"));
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap();
                if !object.contains_key(key) {
                    panic!("missing required {key} in {value}");
                }
            }
            for (key, field) in object {
                if let Some(property) = schema["properties"].get(key) {
                    conforms(field, property);
                } else if let Some(additional) = schema.get("additionalProperties") {
                    conforms(field, additional);
                }
            }
        }
        Some("array") => {
            let items = value.as_array().unwrap_or_else(|| panic!("expected an array in {value}"));
            for item in items {
                conforms(item, &schema["items"]);
            }
        }
        Some("string") => {
            let text = value.as_str().unwrap_or_else(|| panic!("expected a string for {schema}: {value}"));
            if let Some(pattern) = schema["pattern"].as_str() {
                assert!(regex::Regex::new(pattern).unwrap().is_match(text), "{text:?} does not match {pattern}");
            }
        }
        Some("integer") => assert!(value.is_i64() || value.is_u64(), "expected an integer: {value}"),
        _ => {}
    }
}

/// The `Link` entries SwiftPM can read: `<url>` and attributes, split on
/// `,` then `;`.
fn links(headers: &HeaderMap) -> Vec<Vec<String>> {
    headers
        .get_all("link")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(',').map(str::to_owned).collect::<Vec<_>>())
        .map(|entry| entry.split(';').map(|f| f.trim().to_owned()).collect())
        .collect()
}

/// The release `version` of `scope.name` published to `repo` and checked
/// as SwiftPM's publish command checks the answer.
async fn publish_release(
    server: &TestServer,
    repo: &str,
    token: &str,
    folder: &str,
    version: &str,
    body: &str,
) -> Vec<u8> {
    let archive = source_archive(folder, MANIFEST, body);
    let metadata = metadata_json("https://git.example/acme/LinkedList");
    let response = publish(
        server,
        repo,
        &format!("acme/LinkedList/{version}"),
        Some(token),
        publish_body(BOUNDARY, &archive, Some(&metadata)),
    )
    .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    assert_eq!(header(response.headers(), "content-version"), "1");
    assert_eq!(header(response.headers(), "location"), server.url(&format!("/swift/{repo}/acme/LinkedList/{version}")));
    archive
}

/// `swift package resolve` of `acme.LinkedList` `from: "1.0.0"`: the
/// requests in SwiftPM's order, each answer checked as it checks it.
/// Returns the archive downloaded.
async fn resolve(server: &TestServer, repo: &str, scope: &str, name: &str, version: &str) -> Vec<u8> {
    let package = format!("/swift/{repo}/{scope}/{name}");
    // 1. The releases.
    let list = get(server, &package, Some(JSON_V1)).await;
    assert_eq!(list.status(), 200);
    assert_swiftpm_accepts(list.headers(), "application/json");
    let latest = links(list.headers());
    assert!(latest.iter().any(|l| l.len() == 2 && l[1] == "rel=\"latest-version\""), "{latest:?}");
    let releases: Value = list.json().await.unwrap();
    conforms(&releases, &releases_schema());
    assert!(releases["releases"][version]["problem"].is_null(), "{releases}");
    // 2. The chosen release's metadata.
    let metadata = get(server, &format!("{package}/{version}"), Some(JSON_V1)).await;
    assert_eq!(metadata.status(), 200);
    assert_swiftpm_accepts(metadata.headers(), "application/json");
    let release: Value = metadata.json().await.unwrap();
    conforms(&release, &release_schema());
    assert_eq!(release["version"], version);
    let checksum = release["resources"][0]["checksum"].as_str().unwrap().to_owned();
    assert_eq!(release["resources"][0]["name"], "source-archive");
    // 3. Its manifest, with the version-specific ones linked in the form
    // SwiftPM reads: exactly four fields, a tools version X.Y[.Z].
    let manifest = get(server, &format!("{package}/{version}/Package.swift"), Some(SWIFT_V1)).await;
    assert_eq!(manifest.status(), 200);
    assert_swiftpm_accepts(manifest.headers(), "text/x-swift");
    let alternates = links(manifest.headers());
    let alternate: Vec<&Vec<String>> =
        alternates.iter().filter(|l| l.contains(&"rel=\"alternate\"".to_owned())).collect();
    assert_eq!(alternate.len(), 1, "{alternates:?}");
    assert_eq!(alternate[0].len(), 4);
    assert!(alternate[0].contains(&"filename=\"Package@swift-5.8.swift\"".to_owned()), "{alternate:?}");
    assert!(alternate[0].contains(&"swift-tools-version=\"5.8\"".to_owned()), "{alternate:?}");
    assert_eq!(manifest.text().await.unwrap(), MANIFEST);
    // 4. The version-specific manifest, asked for with three components.
    let specific = get(server, &format!("{package}/{version}/Package.swift?swift-version=5.8.0"), Some(SWIFT_V1)).await;
    assert_eq!(specific.status(), 200);
    assert_eq!(header(specific.headers(), "content-type"), "text/x-swift");
    assert_eq!(header(specific.headers(), "content-disposition"), "attachment; filename=\"Package@swift-5.8.swift\"");
    assert_eq!(specific.text().await.unwrap(), MANIFEST_58);
    // 5. The archive, checked against the checksum as an exact string.
    let zip = get(server, &format!("{package}/{version}.zip"), Some(ZIP_V1)).await;
    assert_eq!(zip.status(), 200);
    assert_swiftpm_accepts(zip.headers(), "application/zip");
    assert_eq!(header(zip.headers(), "content-disposition"), format!("attachment; filename=\"{name}-{version}.zip\""));
    assert_eq!(header(zip.headers(), "accept-ranges"), "bytes");
    let length: usize = header(zip.headers(), "content-length").parse().unwrap();
    let digest = header(zip.headers(), "digest").to_owned();
    let bytes = zip.bytes().await.unwrap().to_vec();
    assert_eq!(bytes.len(), length);
    assert_eq!(sha256_hex(&bytes), checksum);
    let raw = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
    assert_eq!(digest, format!("sha-256={raw}"));
    // SwiftPM strips exactly one top-level folder and needs Package.swift there.
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
    let tops: std::collections::BTreeSet<String> =
        archive.file_names().map(|n| n.split('/').next().unwrap().to_owned()).collect();
    assert_eq!(tops.len(), 1);
    let top = tops.into_iter().next().unwrap();
    assert!(archive.by_name(&format!("{top}/Package.swift")).is_ok());
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_then_resolve_replays_swiftpm() {
    let server = TestServer::start_with(Some(CONFIG), &[]);
    let token = server.token(&["swift"], &["read", "publish"]).await;
    let first = publish_release(&server, "swift", &token, "acme.LinkedList", "1.0.0", "struct List {}").await;
    publish_release(&server, "swift", &token, "acme.LinkedList", "1.1.0", "struct List { var count = 0 }").await;

    // Read anonymously, as the repository allows, and case-insensitively.
    let downloaded = resolve(&server, "swift", "acme", "LinkedList", "1.0.0").await;
    assert_eq!(downloaded, first);
    resolve(&server, "swift", "ACME", "linkedlist", "1.1.0").await;

    // The list: newest first, latest-version naming it; the release links
    // its neighbours.
    let list = get(&server, "/swift/swift/acme/LinkedList.json", Some(JSON_V1)).await;
    let base = server.url("/swift/swift/acme/LinkedList");
    assert_eq!(header(list.headers(), "link"), format!("<{base}/1.1.0>; rel=\"latest-version\""));
    let body: Value = list.json().await.unwrap();
    assert_eq!(body["releases"]["1.0.0"]["url"], format!("{base}/1.0.0"));
    let release = get(&server, "/swift/swift/acme/LinkedList/1.0.0.json", Some(JSON_V1)).await;
    let links = header(release.headers(), "link").to_owned();
    assert!(links.contains(&format!("<{base}/1.1.0>; rel=\"successor-version\"")), "{links}");
    let release: Value = release.json().await.unwrap();
    assert_eq!(release["id"], "acme.LinkedList");
    // The metadata as published, the date in whole seconds.
    assert_eq!(release["metadata"]["originalPublicationTime"], "2024-01-02T03:04:05Z");
    assert_eq!(release["metadata"]["licenseURL"], "https://acme.example/LICENSE?format=raw");
    assert_eq!(release["metadata"]["author"]["organization"]["name"], "Acme");

    // A swift-version with no manifest of its own: 303 to the plain one.
    let other =
        get(&server, "/swift/swift/acme/LinkedList/1.0.0/Package.swift?swift-version=5.9.0", Some(SWIFT_V1)).await;
    assert_eq!(other.status(), 303);
    assert_eq!(header(other.headers(), "location"), format!("{base}/1.0.0/Package.swift"));
    assert_eq!(header(other.headers(), "content-version"), "1");

    // HEAD answers every GET.
    for path in ["", "/1.0.0", "/1.0.0.zip", "/1.0.0/Package.swift"] {
        let head = client().head(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert_eq!(header(head.headers(), "content-version"), "1");
    }

    // A range of the archive (Accept-Ranges: bytes).
    let range = client().get(format!("{base}/1.0.0.zip")).header("Range", "bytes=0-3").send().await.unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().await.unwrap().as_ref(), &first[..4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_follows_the_spec() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(data.path(), Some(CONFIG), &[]);
    let token = server.token(&["swift"], &["read", "publish"]).await;
    let reader = server.token(&["swift"], &["read"]).await;
    publish_release(&server, "swift", &token, "acme.LinkedList", "1.0.0", "struct List {}").await;

    // Immutable: the same version again is a 409, other bytes or not.
    let archive = source_archive("acme.LinkedList", MANIFEST, "struct List {}");
    let again =
        publish(&server, "swift", "acme/LinkedList/1.0.0", Some(&token), publish_body(BOUNDARY, &archive, None)).await;
    assert_problem(again, 409, "already exists").await;
    let other = source_archive("acme.LinkedList", MANIFEST, "struct Other {}");
    let conflict =
        publish(&server, "swift", "ACME/linkedlist/1.0.0", Some(&token), publish_body(BOUNDARY, &other, None)).await;
    assert_problem(conflict, 409, "already exists").await;

    // Authentication: 401 with a challenge, 403 for a token that may only read.
    let anonymous =
        publish(&server, "swift", "acme/LinkedList/2.0.0", None, publish_body(BOUNDARY, &archive, None)).await;
    assert!(header(anonymous.headers(), "www-authenticate").starts_with("Basic realm="));
    assert_problem(anonymous, 401, "authentication required").await;
    let read_only =
        publish(&server, "swift", "acme/LinkedList/2.0.0", Some(&reader), publish_body(BOUNDARY, &archive, None)).await;
    assert_problem(read_only, 403, "may not publish").await;

    // Refused contents are 422 and leave nothing behind.
    let files = || files_under(data.path());
    let before = files();
    let mut two_folders = source_archive("acme.LinkedList", MANIFEST, "x");
    {
        let mut zip = zip::ZipWriter::new_append(std::io::Cursor::new(&mut two_folders)).unwrap();
        zip.start_file("stray/file.swift", zip::write::SimpleFileOptions::default()).unwrap();
        zip.finish().unwrap();
    }
    let mut no_manifest = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    no_manifest.start_file("acme.LinkedList/Sources/a.swift", zip::write::SimpleFileOptions::default()).unwrap();
    let no_manifest = no_manifest.finish().unwrap().into_inner();
    for (path, body, status, detail) in [
        ("acme/LinkedList/2.0.0", publish_body(BOUNDARY, b"not a zip", None), 422, "not a zip archive"),
        ("acme/LinkedList/2.0.0", publish_body(BOUNDARY, &two_folders, None), 422, "one top-level folder"),
        ("acme/LinkedList/2.0.0", publish_body(BOUNDARY, &no_manifest, None), 422, "Package.swift"),
        ("acme/LinkedList/2.0.0", publish_body(BOUNDARY, &archive, Some("{\"licenseURL\": 3}")), 422, "licenseURL"),
        ("acme/LinkedList/2.0.0", publish_body(BOUNDARY, &archive, Some("not json")), 422, "not JSON"),
        ("acme/Linked..List/2.0.0", publish_body(BOUNDARY, &archive, None), 400, "invalid package name"),
        ("acme/LinkedList/2.0", publish_body(BOUNDARY, &archive, None), 400, "semantic version"),
    ] {
        let response = publish(&server, "swift", path, Some(&token), body).await;
        assert_problem(response, status, detail).await;
    }
    let form_without_archive =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{{}}\r\n--{BOUNDARY}--\r\n");
    let response =
        publish(&server, "swift", "acme/LinkedList/2.0.0", Some(&token), form_without_archive.into_bytes()).await;
    assert_problem(response, 400, "no source-archive").await;
    assert_eq!(files(), before, "a refused release left files behind");
    assert_problem(get(&server, "/swift/swift/acme/LinkedList/2.0.0", Some(JSON_V1)).await, 404, "not found").await;

    // A signed release keeps its signature and serves it with the archive.
    let signed_body = {
        let mut body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"source-archive\"\r\nContent-Type: application/zip\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&archive);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"source-archive-signature\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend_from_slice(&[0x30, 0x82, 0x01]);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{{}}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata-signature\"\r\n\r\n").as_bytes());
        body.extend_from_slice(&[0x30, 0x82, 0x02]);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        body
    };
    let unsigned_header = publish(&server, "swift", "acme/LinkedList/3.0.0", Some(&token), signed_body.clone()).await;
    assert_problem(unsigned_header, 422, "X-Swift-Package-Signature-Format").await;
    let signed = reqwest::Client::new()
        .put(server.url("/swift/swift/acme/LinkedList/3.0.0"))
        .bearer_auth(&token)
        .header("Content-Type", format!("multipart/form-data;boundary=\"{BOUNDARY}\""))
        .header("Accept", JSON_V1)
        .header("X-Swift-Package-Signature-Format", "cms-1.0.0")
        .body(signed_body)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 201);
    let release: Value = get(&server, "/swift/swift/acme/LinkedList/3.0.0", Some(JSON_V1)).await.json().await.unwrap();
    conforms(&release, &release_schema());
    assert_eq!(release["resources"][0]["signing"]["signatureFormat"], "cms-1.0.0");
    assert_eq!(release["resources"][0]["signing"]["signatureBase64Encoded"], "MIIB");
    let zip = get(&server, "/swift/swift/acme/LinkedList/3.0.0.zip", Some(ZIP_V1)).await;
    assert_eq!(header(zip.headers(), "x-swift-package-signature-format"), "cms-1.0.0");
    assert_eq!(header(zip.headers(), "x-swift-package-signature"), "MIIB");
}

#[tokio::test(flavor = "multi_thread")]
async fn availability_login_identifiers_and_api_versions() {
    let server = TestServer::start_with(Some(CONFIG), &[]);
    let token = server.token(&["swift", "private"], &["read", "publish"]).await;
    let other = server.token(&["swift"], &["read"]).await;
    publish_release(&server, "swift", &token, "acme.LinkedList", "1.0.0", "struct List {}").await;

    // `GET availability` without Accept (SwiftPM's default-registry check).
    let available = get(&server, "/swift/swift/availability", None).await;
    assert_eq!(available.status(), 200);
    assert_eq!(header(available.headers(), "content-version"), "1");

    // `swift package-registry login URL/login --token`: a bodiless POST,
    // no Accept; only 200 is success.
    let login = |repo: &str, token: Option<&str>| {
        let mut request = reqwest::Client::new().post(server.url(&format!("/swift/{repo}/login")));
        if let Some(token) = token {
            request = request.bearer_auth(token.to_owned());
        }
        request.send()
    };
    let accepted = login("private", Some(&token)).await.unwrap();
    assert_eq!(accepted.status(), 200);
    assert_eq!(header(accepted.headers(), "content-version"), "1");
    assert_problem(login("private", None).await.unwrap(), 401, "authentication required").await;
    assert_problem(login("swift", None).await.unwrap(), 401, "log in with a token").await;
    assert_problem(login("private", Some(&other)).await.unwrap(), 403, "may not read").await;
    assert_problem(login("private", Some("not-a-token")).await.unwrap(), 401, "").await;

    // Identifiers by source repository, however the URL is spelled.
    for url in [
        "https://git.example/acme/LinkedList",
        "https://git.example/acme/linkedlist.git",
        "git@git.example:acme/LinkedList.git",
    ] {
        let path = format!("/swift/swift/identifiers?url={}", percent_encode(url));
        let found = get(&server, &path, Some(JSON_V1)).await;
        assert_eq!(found.status(), 200, "{url}");
        assert_swiftpm_accepts(found.headers(), "application/json");
        let body: Value = found.json().await.unwrap();
        conforms(&body, &identifiers_schema());
        assert_eq!(body["identifiers"], json!(["acme.LinkedList"]));
    }
    assert_problem(get(&server, "/swift/swift/identifiers", Some(JSON_V1)).await, 400, "url query parameter").await;
    let unknown = get(&server, "/swift/swift/identifiers?url=https://git.example/other+repo", Some(JSON_V1)).await;
    assert_problem(unknown, 404, "https://git.example/other+repo").await;

    // API versions: none or v1 are served; v2 is unsupported (415);
    // anything else is invalid (400).
    for accept in [None, Some("*/*"), Some("application/vnd.swift.registry+json")] {
        assert_eq!(get(&server, "/swift/swift/acme/LinkedList", accept).await.status(), 200, "{accept:?}");
    }
    let v2 = get(&server, "/swift/swift/acme/LinkedList", Some("application/vnd.swift.registry.v2+json")).await;
    assert_problem(v2, 415, "unsupported API version").await;
    let invalid = get(&server, "/swift/swift/acme/LinkedList", Some("application/vnd.swift.registry.vX+json")).await;
    assert_problem(invalid, 400, "invalid API version").await;

    // Errors are problems SwiftPM can show, and a private repository
    // answers an anonymous client like a missing one.
    assert_problem(get(&server, "/swift/swift/acme/Missing", Some(JSON_V1)).await, 404, "not found").await;
    assert_problem(get(&server, "/swift/swift/acme/LinkedList/9.9.9", Some(JSON_V1)).await, 404, "not found").await;
    assert_problem(get(&server, "/swift/swift/-acme/LinkedList", Some(JSON_V1)).await, 400, "invalid scope").await;
    let private = get(&server, "/swift/private/acme/LinkedList", Some(JSON_V1)).await;
    let missing = get(&server, "/swift/nowhere/acme/LinkedList", Some(JSON_V1)).await;
    assert_eq!(private.status(), 401);
    assert_eq!(missing.status(), 401);
    let (private, missing) = (private.text().await.unwrap(), missing.text().await.unwrap());
    assert_eq!(private.replace("private", "REPO"), missing.replace("nowhere", "REPO"));
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' | b':' | b'@' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn statuses_show_as_the_spec_says() {
    let server = TestServer::start_with(Some(CONFIG), &[]);
    let token = server.token(&["swift"], &["read", "publish"]).await;
    for version in ["1.0.0", "1.1.0", "1.2.0"] {
        publish_release(&server, "swift", &token, "acme.LinkedList", version, version).await;
    }
    assert_eq!(
        server.set_status("swift", "swift", "acme.LinkedList", "1.1.0", "Archived", ADMIN_TOKEN).await.status(),
        200
    );
    assert_eq!(
        server.set_status("swift", "swift", "ACME.linkedlist", "1.2.0", "Unlisted", ADMIN_TOKEN).await.status(),
        200
    );
    let list: Value = get(&server, "/swift/swift/acme/LinkedList", Some(JSON_V1)).await.json().await.unwrap();
    conforms(&list, &releases_schema());
    // Archived: listed with a problem, which SwiftPM treats as unavailable.
    assert_eq!(list["releases"]["1.1.0"]["problem"]["status"], 410);
    assert!(list["releases"]["1.1.0"]["problem"]["detail"].as_str().unwrap().contains("Archived"));
    assert_problem(get(&server, "/swift/swift/acme/LinkedList/1.1.0.zip", Some(ZIP_V1)).await, 410, "Archived").await;
    // Unlisted: left out of the list, still served by exact version.
    assert!(list["releases"].get("1.2.0").is_none(), "{list}");
    assert_eq!(get(&server, "/swift/swift/acme/LinkedList/1.2.0.zip", Some(ZIP_V1)).await.status(), 200);
    let latest = get(&server, "/swift/swift/acme/LinkedList", Some(JSON_V1)).await;
    assert!(header(latest.headers(), "link").contains("/1.0.0>; rel=\"latest-version\""));
}

/// `app` reads through `[internal, swift-store]`; the store's external
/// connection is another registry.
#[tokio::test(flavor = "multi_thread")]
async fn resolves_through_the_chain_and_keeps_working_without_the_upstream() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let rules =
        "  rules:\n    - patterns: [\"/swift/acme/*\"]\n      blockedVersions: [\"/swift/Acme/LinkedList@1.1.0\"]\n";
    let wharf = TestServer::start_with(Some(&store_chain_config("swift", &public.url("/swift/public"), rules)), &[]);
    let public_token = public.token(&["public"], &["read", "publish"]).await;
    let published =
        publish_release(&public, "public", &public_token, "acme.LinkedList", "1.0.0", "struct List {}").await;
    publish_release(&public, "public", &public_token, "acme.LinkedList", "1.1.0", "struct Blocked {}").await;

    // Through the chain: the archive is the upstream's, checked against its checksum.
    let list = get(&wharf, "/swift/app/acme/LinkedList", Some(JSON_V1)).await;
    assert_eq!(list.status(), 200);
    let body: Value = list.json().await.unwrap();
    assert_eq!(body["releases"]["1.0.0"]["url"], wharf.url("/swift/app/acme/LinkedList/1.0.0"));
    // The policy's blocked version is not offered, nor served.
    assert!(body["releases"].get("1.1.0").is_none(), "{body}");
    assert_eq!(get(&wharf, "/swift/app/acme/LinkedList/1.1.0.zip", Some(ZIP_V1)).await.status(), 404);
    let zip = get(&wharf, "/swift/app/acme/LinkedList/1.0.0.zip", Some(ZIP_V1)).await;
    assert_eq!(zip.status(), 200);
    assert_eq!(zip.bytes().await.unwrap().to_vec(), published);
    let release: Value = get(&wharf, "/swift/app/acme/LinkedList/1.0.0", Some(JSON_V1)).await.json().await.unwrap();
    conforms(&release, &release_schema());
    assert_eq!(release["resources"][0]["checksum"], sha256_hex(&published));
    let manifest = get(&wharf, "/swift/app/acme/LinkedList/1.0.0/Package.swift", Some(SWIFT_V1)).await;
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.text().await.unwrap(), MANIFEST);

    // Publishing a name first seen upstream is refused (origin controls).
    let internal_token = wharf.token(&["internal"], &["read", "publish"]).await;
    let archive = source_archive("acme.LinkedList", MANIFEST, "shadow");
    let shadow = publish(
        &wharf,
        "internal",
        "acme/LinkedList/9.0.0",
        Some(&internal_token),
        publish_body(BOUNDARY, &archive, None),
    )
    .await;
    assert_problem(shadow, 403, "may not be published here").await;

    // The upstream gone: what was fetched still resolves.
    drop(public);
    let list = get(&wharf, "/swift/app/acme/LinkedList", Some(JSON_V1)).await;
    assert_eq!(list.status(), 200);
    let zip = get(&wharf, "/swift/app/acme/LinkedList/1.0.0.zip", Some(ZIP_V1)).await;
    assert_eq!(zip.bytes().await.unwrap().to_vec(), published);
    let manifest = get(&wharf, "/swift/app/acme/LinkedList/1.0.0/Package.swift", Some(SWIFT_V1)).await;
    assert_eq!(manifest.status(), 200);
}
