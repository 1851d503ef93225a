//! A `.nupkg` as pushed: a zip with exactly one `.nuspec` at its root,
//! whose `<metadata>` says which package and version it is. The check reads
//! only the central directory and the manifest, so a package's size costs
//! nothing beyond its staging; what the archive would unpack to is capped
//! from the entries it declares (clients unpack all of it on install).
//! Pure, no I/O.

use std::io::{Read, Seek};

use quick_xml::events::{BytesStart, Event};
use serde::{Deserialize, Serialize};

use super::{NugetError, NugetVersion, parse_version, validate_id};

/// What a package may hold.
#[derive(Clone, Copy, Debug)]
pub struct PackageLimits {
    pub max_entries: usize,
    /// The sum of what its entries unpack to.
    pub max_unpacked_bytes: u64,
    pub max_nuspec_bytes: u64,
}

impl Default for PackageLimits {
    fn default() -> Self {
        PackageLimits { max_entries: 65_536, max_unpacked_bytes: 8 << 30, max_nuspec_bytes: 1 << 20 }
    }
}

/// A dependency of one target framework (or of every framework, when the
/// group names none), as the registration document serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyGroup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_framework: Option<String>,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub id: String,
    /// The version range as the manifest writes it (`[1.0, 2.0)`, or a bare
    /// minimum); `(, )` when it names none.
    pub range: String,
}

/// A package type (`Dependency`, `DotnetTool`, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageType {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The `<metadata>` of a `.nuspec`: what the registry keeps of a version
/// and serves in registrations and search. Stored as the version's
/// metadata, so an upstream's registration maps into the same shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The id as the publisher spelled it.
    pub id: String,
    /// The version as the manifest writes it (metadata included): shown.
    pub version: String,
    #[serde(default)]
    pub authors: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project_url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license_url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license_expression: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub icon_url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub release_notes: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub copyright: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub language: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub min_client_version: String,
    #[serde(default)]
    pub require_license_acceptance: bool,
    #[serde(default)]
    pub dependency_groups: Vec<DependencyGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub package_types: Vec<PackageType>,
}

impl Manifest {
    /// The version, parsed (it was checked when the manifest was read).
    pub fn parsed_version(&self) -> Result<NugetVersion, NugetError> {
        parse_version(&self.version)
    }
}

/// A checked package: its manifest, parsed and as stored in the archive
/// (the flat container serves the `.nuspec` as published).
#[derive(Debug)]
pub struct Nupkg {
    pub manifest: Manifest,
    pub version: NugetVersion,
    pub nuspec: Vec<u8>,
    pub file_count: usize,
    pub unpacked_size: u64,
}

fn invalid(reason: impl Into<String>) -> NugetError {
    NugetError::InvalidPackage(reason.into())
}

/// Checks a pushed `.nupkg` and reads its manifest: a zip archive, no entry
/// outside it, within `limits`, and exactly one `.nuspec` at its root,
/// named after the id its manifest declares.
pub fn inspect_nupkg(reader: impl Read + Seek, limits: PackageLimits) -> Result<Nupkg, NugetError> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| invalid(format!("it is not a zip archive: {e}")))?;
    if archive.len() > limits.max_entries {
        return Err(invalid(format!("it has {} entries, more than the {} allowed", archive.len(), limits.max_entries)));
    }
    let mut unpacked_size = 0u64;
    let mut nuspecs = Vec::new();
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(|e| invalid(format!("entry {index} is unreadable: {e}")))?;
        let name = entry.name().to_owned();
        let escapes = name.starts_with(['/', '\\'])
            || name.split(['/', '\\']).any(|part| part == ".." || part.contains(':'))
            || name.contains('\0');
        if escapes {
            return Err(invalid(format!("entry {name:?} would be unpacked outside the package folder")));
        }
        unpacked_size = unpacked_size.saturating_add(entry.size());
        if unpacked_size > limits.max_unpacked_bytes {
            return Err(invalid(format!("it unpacks to more than {} bytes", limits.max_unpacked_bytes)));
        }
        if !name.contains(['/', '\\']) && name.to_ascii_lowercase().ends_with(".nuspec") {
            nuspecs.push((index, name));
        }
    }
    let (index, nuspec_name) = match nuspecs.as_slice() {
        [one] => one.clone(),
        [] => return Err(invalid("it has no .nuspec manifest at its root")),
        many => {
            let names: Vec<&str> = many.iter().map(|(_, name)| name.as_str()).collect();
            return Err(invalid(format!("it has more than one .nuspec manifest at its root: {}", names.join(", "))));
        }
    };
    let entry = archive.by_index(index).map_err(|e| invalid(format!("{nuspec_name} is unreadable: {e}")))?;
    if entry.size() > limits.max_nuspec_bytes {
        return Err(invalid(format!("{nuspec_name} is larger than {} bytes", limits.max_nuspec_bytes)));
    }
    let mut nuspec = Vec::new();
    entry
        .take(limits.max_nuspec_bytes + 1)
        .read_to_end(&mut nuspec)
        .map_err(|e| invalid(format!("{nuspec_name} is unreadable: {e}")))?;
    if nuspec.len() as u64 > limits.max_nuspec_bytes {
        return Err(invalid(format!("{nuspec_name} is larger than {} bytes", limits.max_nuspec_bytes)));
    }
    let manifest = parse_nuspec(&nuspec).map_err(|reason| invalid(format!("{nuspec_name}: {reason}")))?;
    let stem = &nuspec_name[..nuspec_name.len() - ".nuspec".len()];
    if !stem.eq_ignore_ascii_case(&manifest.id) {
        return Err(invalid(format!(
            "its manifest {nuspec_name} declares package id {}; the manifest must be named {}.nuspec",
            manifest.id, manifest.id
        )));
    }
    let version = manifest.parsed_version()?;
    Ok(Nupkg { manifest, version, nuspec, file_count: archive.len(), unpacked_size })
}

/// The text and attributes of an element being read.
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    text: String,
}

impl Element {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

fn element(start: &BytesStart<'_>) -> Result<Element, String> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| format!("malformed attribute in <{name}>: {e}"))?;
        let key = String::from_utf8_lossy(attribute.key.local_name().as_ref()).into_owned();
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| format!("malformed attribute {key} in <{name}>: {e}"))?;
        attributes.push((key, value.into_owned()));
    }
    Ok(Element { name, attributes, text: String::new() })
}

/// Reads a `.nuspec`'s `<package><metadata>`, ignoring XML namespaces (the
/// schema's namespace changed across NuGet versions) and the elements it
/// does not serve. The id and version are required and checked.
pub fn parse_nuspec(bytes: &[u8]) -> Result<Manifest, String> {
    let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
        .map_err(|_| "the manifest is not UTF-8".to_owned())?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut manifest = Manifest::default();
    // The open elements, outermost first.
    let mut open: Vec<Element> = Vec::new();
    let mut group: Option<DependencyGroup> = None;
    let mut saw_metadata = false;
    loop {
        let event =
            reader.read_event().map_err(|e| format!("malformed XML at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(start) => {
                let element = element(&start)?;
                if open.len() > 64 {
                    return Err("elements are nested too deeply".into());
                }
                enter(&mut manifest, &mut group, &open, &element);
                saw_metadata |= path_is(&open, &["package"]) && element.name == "metadata";
                open.push(element);
            }
            Event::Empty(start) => {
                let element = element(&start)?;
                enter(&mut manifest, &mut group, &open, &element);
                leave(&mut manifest, &mut group, &open, element)?;
            }
            Event::End(_) => {
                let element = open.pop().ok_or("an element closes that never opened")?;
                leave(&mut manifest, &mut group, &open, element)?;
            }
            Event::Text(text) => {
                let text = text.decode().map_err(|e| format!("malformed text: {e}"))?;
                if let Some(current) = open.last_mut() {
                    current.text.push_str(&text);
                }
            }
            Event::CData(data) => {
                let text = data.decode().map_err(|e| format!("malformed CDATA: {e}"))?;
                if let Some(current) = open.last_mut() {
                    current.text.push_str(&text);
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().map_err(|e| format!("malformed reference: {e}"))? {
                    Some(c) => c,
                    None => match reference.decode().map_err(|e| format!("malformed reference: {e}"))?.as_ref() {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(format!("unknown entity &{other};")),
                    },
                };
                if let Some(current) = open.last_mut() {
                    current.text.push(resolved);
                }
            }
            Event::DocType(_) => return Err("a manifest may not declare a DOCTYPE".into()),
            Event::Eof => match open.last() {
                Some(unclosed) => return Err(format!("malformed XML: <{}> is never closed", unclosed.name)),
                None => break,
            },
            _ => {}
        }
    }
    if !saw_metadata {
        return Err("it has no <package><metadata> element".into());
    }
    if manifest.id.is_empty() {
        return Err("<metadata> has no <id>".into());
    }
    validate_id(&manifest.id).map_err(|e| e.to_string())?;
    if manifest.version.is_empty() {
        return Err("<metadata> has no <version>".into());
    }
    parse_version(&manifest.version).map_err(|e| e.to_string())?;
    Ok(manifest)
}

fn path_is(open: &[Element], path: &[&str]) -> bool {
    open.len() == path.len() && open.iter().zip(path).all(|(element, name)| element.name == *name)
}

/// An element opens: groups start here, and attributes-only elements are
/// read whole in [`leave`].
fn enter(manifest: &mut Manifest, group: &mut Option<DependencyGroup>, open: &[Element], element: &Element) {
    if path_is(open, &["package", "metadata", "dependencies"]) && element.name == "group" {
        *group = Some(DependencyGroup {
            target_framework: element.attribute("targetFramework").map(str::to_owned),
            dependencies: Vec::new(),
        });
    }
    if path_is(open, &["package", "metadata"]) && element.name == "dependencies" {
        manifest.dependency_groups.clear();
    }
}

/// An element closes, with its text complete.
fn leave(
    manifest: &mut Manifest,
    group: &mut Option<DependencyGroup>,
    open: &[Element],
    element: Element,
) -> Result<(), String> {
    let text = element.text.trim().to_owned();
    if path_is(open, &["package", "metadata"]) {
        match element.name.as_str() {
            "id" => manifest.id = text,
            "version" => manifest.version = text,
            "authors" => manifest.authors = text,
            "description" => manifest.description = text,
            "title" => manifest.title = text,
            "summary" => manifest.summary = text,
            "tags" => {
                manifest.tags = text.split([' ', ',', ';']).filter(|t| !t.is_empty()).map(str::to_owned).collect()
            }
            "projectUrl" => manifest.project_url = text,
            "licenseUrl" => manifest.license_url = text,
            "license" if element.attribute("type") == Some("expression") => manifest.license_expression = text,
            "iconUrl" => manifest.icon_url = text,
            "releaseNotes" => manifest.release_notes = text,
            "copyright" => manifest.copyright = text,
            "language" => manifest.language = text,
            "requireLicenseAcceptance" => manifest.require_license_acceptance = text.eq_ignore_ascii_case("true"),
            _ => {}
        }
    } else if path_is(open, &["package"]) && element.name == "metadata" {
        manifest.min_client_version = element.attribute("minClientVersion").unwrap_or_default().to_owned();
    } else if element.name == "dependency" {
        let dependency = || -> Result<Dependency, String> {
            let id = element.attribute("id").ok_or("a <dependency> has no id")?;
            validate_id(id).map_err(|e| format!("dependency: {e}"))?;
            let range = element.attribute("version").map(str::trim).filter(|v| !v.is_empty()).unwrap_or("(, )");
            Ok(Dependency { id: id.to_owned(), range: range.to_owned() })
        };
        if path_is(open, &["package", "metadata", "dependencies", "group"]) {
            if let Some(group) = group.as_mut() {
                group.dependencies.push(dependency()?);
            }
        } else if path_is(open, &["package", "metadata", "dependencies"]) {
            // A manifest without groups: one group for every framework.
            if manifest.dependency_groups.is_empty() {
                manifest.dependency_groups.push(DependencyGroup::default());
            }
            manifest.dependency_groups[0].dependencies.push(dependency()?);
        }
    } else if path_is(open, &["package", "metadata", "dependencies"]) && element.name == "group" {
        if let Some(group) = group.take() {
            manifest.dependency_groups.push(group);
        }
    } else if path_is(open, &["package", "metadata", "packageTypes"])
        && element.name == "packageType"
        && let Some(name) = element.attribute("name")
    {
        let version = element.attribute("version").map(str::to_owned);
        manifest.package_types.push(PackageType { name: name.to_owned(), version });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    pub(crate) const NUSPEC: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">
  <metadata minClientVersion="2.12">
    <id>Acme.Demo</id>
    <version>1.0.0-Beta+build.7</version>
    <authors>Acme &amp; friends</authors>
    <description><![CDATA[A <demo>]]> package</description>
    <tags>one two,three</tags>
    <license type="expression">MIT</license>
    <dependencies>
      <group targetFramework=".NETStandard2.0">
        <dependency id="Acme.Base" version="[1.0.0, 2.0.0)" />
        <dependency id="Acme.Log" />
      </group>
      <group targetFramework="net45" />
    </dependencies>
    <packageTypes><packageType name="Dependency" /></packageTypes>
  </metadata>
</package>"#;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn a_manifest_is_read_with_its_groups_and_escapes() {
        let manifest = parse_nuspec(NUSPEC.as_bytes()).unwrap();
        assert_eq!(manifest.id, "Acme.Demo");
        assert_eq!(manifest.version, "1.0.0-Beta+build.7");
        assert_eq!(manifest.authors, "Acme & friends");
        assert_eq!(manifest.description, "A <demo> package");
        assert_eq!(manifest.tags, ["one", "two", "three"]);
        assert_eq!(manifest.license_expression, "MIT");
        assert_eq!(manifest.min_client_version, "2.12");
        assert_eq!(manifest.dependency_groups.len(), 2);
        assert_eq!(manifest.dependency_groups[0].target_framework.as_deref(), Some(".NETStandard2.0"));
        assert_eq!(manifest.dependency_groups[0].dependencies[0].range, "[1.0.0, 2.0.0)");
        assert_eq!(manifest.dependency_groups[0].dependencies[1].range, "(, )");
        assert!(manifest.dependency_groups[1].dependencies.is_empty());
        assert_eq!(manifest.package_types[0].name, "Dependency");
    }

    #[test]
    fn flat_dependencies_form_one_group() {
        let nuspec = r#"<package><metadata><id>A</id><version>1.0</version>
            <dependencies><dependency id="B" version="1.0" /></dependencies></metadata></package>"#;
        let manifest = parse_nuspec(nuspec.as_bytes()).unwrap();
        assert_eq!(
            manifest.dependency_groups,
            [DependencyGroup {
                target_framework: None,
                dependencies: vec![Dependency { id: "B".into(), range: "1.0".into() }],
            }]
        );
    }

    #[test]
    fn malformed_manifests_are_refused_with_a_reason() {
        for (nuspec, reason) in [
            ("<package><metadata><version>1.0</version></metadata></package>", "no <id>"),
            ("<package><metadata><id>A</id></metadata></package>", "no <version>"),
            ("<package><metadata><id>A/../b</id><version>1</version></metadata></package>", "invalid package id"),
            ("<package><metadata><id>A</id><version>one</version></metadata></package>", "invalid version"),
            ("<package><metadata><id>A</id><version>1</version></metadata>", "malformed XML"),
            ("<other/>", "no <package><metadata>"),
            ("<!DOCTYPE x [<!ENTITY a 'b'>]><package/>", "DOCTYPE"),
        ] {
            let error = parse_nuspec(nuspec.as_bytes()).unwrap_err();
            assert!(error.contains(reason), "{nuspec}: {error}");
        }
    }

    #[test]
    fn a_package_needs_exactly_one_root_manifest_named_after_its_id() {
        let ok = zip_of(&[("Acme.Demo.nuspec", NUSPEC.as_bytes()), ("lib/net45/a.dll", b"x")]);
        let package = inspect_nupkg(Cursor::new(ok), PackageLimits::default()).unwrap();
        assert_eq!(package.version.key(), "1.0.0-beta");
        assert_eq!(package.file_count, 2);
        assert_eq!(package.nuspec, NUSPEC.as_bytes());

        let limits = PackageLimits::default();
        let refuse = |bytes: Vec<u8>, limits: PackageLimits, reason: &str| {
            let error = inspect_nupkg(Cursor::new(bytes), limits).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
        };
        refuse(b"not a zip".to_vec(), limits, "not a zip archive");
        refuse(zip_of(&[("lib/a.dll", b"x")]), limits, "no .nuspec");
        refuse(zip_of(&[("Acme.Demo.nuspec", NUSPEC.as_bytes()), ("b.nuspec", b"")]), limits, "more than one");
        refuse(zip_of(&[("Other.nuspec", NUSPEC.as_bytes())]), limits, "must be named Acme.Demo.nuspec");
        refuse(zip_of(&[("A.nuspec", b""), ("../evil", b"")]), limits, "outside the package folder");
        refuse(zip_of(&[("A.nuspec", b""), ("C:\\evil", b"")]), limits, "outside the package folder");
        let small = PackageLimits { max_unpacked_bytes: 100, ..limits };
        refuse(zip_of(&[("Acme.Demo.nuspec", NUSPEC.as_bytes())]), small, "unpacks to more than 100 bytes");
        let few = PackageLimits { max_entries: 1, ..limits };
        refuse(zip_of(&[("Acme.Demo.nuspec", NUSPEC.as_bytes()), ("x", b"")]), few, "more than the 1 allowed");
    }
}
