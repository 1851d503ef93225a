//! What a version's stored metadata says beyond its files, for the management API: its
//! dependencies and readme, where the format carries them (npm's manifest, PyPI's core
//! metadata, Cargo's publish metadata, NuGet's `.nuspec`, a Maven POM). Pure.

use serde::Serialize;
use serde_json::Value;
use wharf_api::PackageFormat;

/// One dependency as the version declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    pub name: String,
    /// The version requirement as written (`^1.2`, `>=2; python_version<"3.12"`, `[1.0, 2.0)`).
    pub requirement: String,
    /// `runtime`, `dev`, `peer`, `optional`, `build`, a NuGet target framework, or a Maven
    /// scope (`compile`, `test`, …, with `, optional`).
    pub kind: String,
}

/// The dependencies `metadata` declares; empty for formats that do not keep them in it.
pub fn dependencies(format: PackageFormat, metadata: &Value) -> Vec<Dependency> {
    match format {
        PackageFormat::Npm => npm(metadata),
        PackageFormat::Pypi => pypi(metadata),
        PackageFormat::Cargo => cargo(metadata),
        PackageFormat::Nuget => nuget(metadata),
        _ => Vec::new(),
    }
}

/// Elements a POM may nest before it is refused as hostile.
const MAX_POM_DEPTH: usize = 64;

/// The dependencies a Maven POM declares in `<project><dependencies>`, as written: a
/// version left to `<dependencyManagement>` or a parent reads `managed`, and properties
/// stay `${…}`. The kind is the scope (`compile` when none is given), marked optional
/// where the POM says so. A POM that does not parse gives none.
pub fn pom_dependencies(pom: &[u8]) -> Vec<Dependency> {
    use quick_xml::events::Event;
    let Ok(text) = std::str::from_utf8(pom.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(pom)) else { return Vec::new() };
    let mut reader = quick_xml::Reader::from_str(text);
    // The open elements, outermost first, without namespace prefixes.
    let mut open: Vec<String> = Vec::new();
    let mut fields: Option<std::collections::BTreeMap<String, String>> = None;
    let mut found = Vec::new();
    let in_dependencies = |open: &[String]| open.len() == 2 && open[0] == "project" && open[1] == "dependencies";
    loop {
        let text = match reader.read_event() {
            Ok(Event::Start(start)) => {
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                if in_dependencies(&open) && name == "dependency" {
                    fields = Some(Default::default());
                }
                open.push(name);
                if open.len() > MAX_POM_DEPTH {
                    return Vec::new();
                }
                continue;
            }
            Ok(Event::End(_)) => {
                let closed = open.pop();
                if closed.as_deref() == Some("dependency")
                    && in_dependencies(&open)
                    && let Some(fields) = fields.take()
                {
                    let field = |key: &str| fields.get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
                    let scope = field("scope").unwrap_or_else(|| "compile".to_owned());
                    let optional = field("optional").is_some_and(|v| v == "true");
                    found.push(Dependency {
                        name: format!(
                            "{}:{}",
                            field("groupId").unwrap_or_default(),
                            field("artifactId").unwrap_or_default()
                        ),
                        requirement: field("version").unwrap_or_else(|| "managed".to_owned()),
                        kind: if optional { format!("{scope}, optional") } else { scope },
                    });
                }
                continue;
            }
            Ok(Event::Text(text)) => text.decode().map(|t| t.into_owned()).unwrap_or_default(),
            Ok(Event::CData(data)) => data.decode().map(|t| t.into_owned()).unwrap_or_default(),
            Ok(Event::GeneralRef(reference)) => match reference.resolve_char_ref() {
                Ok(Some(c)) => c.to_string(),
                _ => match reference.decode().as_deref() {
                    Ok("amp") => "&".to_owned(),
                    Ok("lt") => "<".to_owned(),
                    Ok("gt") => ">".to_owned(),
                    Ok("quot") => "\"".to_owned(),
                    Ok("apos") => "'".to_owned(),
                    _ => String::new(),
                },
            },
            Ok(Event::Eof) => return found,
            // A DOCTYPE could declare entities; a POM needs none.
            Ok(Event::DocType(_)) | Err(_) => return Vec::new(),
            Ok(_) => continue,
        };
        if let (Some(fields), [_, _, _, field]) = (fields.as_mut(), open.as_slice()) {
            fields.entry(field.clone()).or_default().push_str(&text);
        }
    }
}

/// The readme the version was published with, if the format keeps one in its metadata.
pub fn readme(format: PackageFormat, metadata: &Value) -> Option<&str> {
    match format {
        PackageFormat::Npm | PackageFormat::Cargo => metadata.get("readme")?.as_str().filter(|r| !r.is_empty()),
        _ => None,
    }
}

fn npm(manifest: &Value) -> Vec<Dependency> {
    let kinds = [
        ("dependencies", "runtime"),
        ("devDependencies", "dev"),
        ("peerDependencies", "peer"),
        ("optionalDependencies", "optional"),
    ];
    kinds
        .iter()
        .flat_map(|(key, kind)| {
            manifest.get(*key).and_then(Value::as_object).into_iter().flatten().map(|(name, requirement)| Dependency {
                name: name.clone(),
                requirement: requirement.as_str().unwrap_or_default().to_owned(),
                kind: (*kind).to_owned(),
            })
        })
        .collect()
}

/// `Requires-Dist: name[extra] (>=1.0); marker`: the name, and the rest as the requirement.
fn pypi(metadata: &Value) -> Vec<Dependency> {
    let lines = metadata.get("requires_dist").and_then(Value::as_array).into_iter().flatten();
    lines
        .filter_map(Value::as_str)
        .filter_map(|line| {
            let line = line.trim();
            let end =
                line.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))).unwrap_or(line.len());
            let (name, requirement) = line.split_at(end);
            let kind = if requirement.contains("extra ==") || requirement.contains("extra==") {
                "optional"
            } else {
                "runtime"
            };
            (!name.is_empty()).then(|| Dependency {
                name: name.to_owned(),
                requirement: requirement.trim().to_owned(),
                kind: kind.to_owned(),
            })
        })
        .collect()
}

fn cargo(metadata: &Value) -> Vec<Dependency> {
    let deps = metadata.get("deps").and_then(Value::as_array).into_iter().flatten();
    deps.filter_map(|dep| {
        let name = dep.get("explicit_name_in_toml").and_then(Value::as_str).or_else(|| dep.get("name")?.as_str())?;
        let kind = match dep.get("kind").and_then(Value::as_str) {
            Some("dev") => "dev",
            Some("build") => "build",
            _ if dep.get("optional").and_then(Value::as_bool) == Some(true) => "optional",
            _ => "runtime",
        };
        Some(Dependency {
            name: name.to_owned(),
            requirement: dep.get("version_req").and_then(Value::as_str).unwrap_or("*").to_owned(),
            kind: kind.to_owned(),
        })
    })
    .collect()
}

fn nuget(manifest: &Value) -> Vec<Dependency> {
    let groups = manifest.get("dependencyGroups").and_then(Value::as_array).into_iter().flatten();
    groups
        .flat_map(|group| {
            let framework = group.get("targetFramework").and_then(Value::as_str).unwrap_or("any").to_owned();
            let dependencies = group.get("dependencies").and_then(Value::as_array).cloned().unwrap_or_default();
            dependencies.into_iter().filter_map(move |dependency| {
                Some(Dependency {
                    name: dependency.get("id")?.as_str()?.to_owned(),
                    requirement: dependency.get("range").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    kind: framework.clone(),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dep(name: &str, requirement: &str, kind: &str) -> Dependency {
        Dependency { name: name.into(), requirement: requirement.into(), kind: kind.into() }
    }

    #[test]
    fn each_format_names_its_dependencies_with_their_kind() {
        let manifest =
            json!({"dependencies": {"left-pad": "^1.3.0"}, "devDependencies": {"tap": "16"}, "readme": "# hi"});
        assert_eq!(
            dependencies(PackageFormat::Npm, &manifest),
            [dep("left-pad", "^1.3.0", "runtime"), dep("tap", "16", "dev")]
        );
        assert_eq!(readme(PackageFormat::Npm, &manifest), Some("# hi"));
        let core = json!({"requires_dist": ["requests (>=2.0)", "pytest; extra == \"test\""]});
        assert_eq!(
            dependencies(PackageFormat::Pypi, &core),
            [dep("requests", "(>=2.0)", "runtime"), dep("pytest", "; extra == \"test\"", "optional")]
        );
        let crate_metadata = json!({"deps": [
            {"name": "serde", "version_req": "^1", "kind": "normal", "optional": false},
            {"name": "cc", "version_req": "^1.0", "kind": "build"},
            {"name": "renamed_to", "explicit_name_in_toml": "alias", "version_req": "2", "kind": "normal", "optional": true},
        ]});
        assert_eq!(
            dependencies(PackageFormat::Cargo, &crate_metadata),
            [dep("serde", "^1", "runtime"), dep("cc", "^1.0", "build"), dep("alias", "2", "optional")]
        );
        let nuspec = json!({"dependencyGroups": [{"targetFramework": "net8.0", "dependencies": [{"id": "Newtonsoft.Json", "range": "[13.0.1, )"}]}]});
        assert_eq!(dependencies(PackageFormat::Nuget, &nuspec), [dep("Newtonsoft.Json", "[13.0.1, )", "net8.0")]);
        assert!(dependencies(PackageFormat::Maven, &nuspec).is_empty());
    }

    #[test]
    fn a_poms_dependencies_as_written() {
        let pom = br#"<?xml version="1.0"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <groupId>com.acme</groupId><artifactId>app</artifactId><version>1.0</version>
  <dependencyManagement><dependencies><dependency>
    <groupId>managed</groupId><artifactId>only</artifactId><version>9</version>
  </dependency></dependencies></dependencyManagement>
  <dependencies>
    <dependency><groupId>org.apache.commons</groupId><artifactId>commons-text</artifactId><version>1.12.0</version></dependency>
    <dependency><groupId>junit</groupId><artifactId>junit</artifactId><version>[4.13,5)</version><scope>test</scope></dependency>
    <dependency><groupId>com.acme</groupId><artifactId>extra</artifactId><scope>runtime</scope><optional>true</optional></dependency>
    <dependency><groupId>a&amp;b</groupId><artifactId>c</artifactId><version>${lib.version}</version></dependency>
  </dependencies>
  <build><plugins><plugin><dependencies><dependency><groupId>p</groupId><artifactId>q</artifactId></dependency></dependencies></plugin></plugins></build>
</project>"#;
        let found: Vec<(String, String, String)> =
            pom_dependencies(pom).into_iter().map(|d| (d.name, d.requirement, d.kind)).collect();
        let expected = [
            ("org.apache.commons:commons-text", "1.12.0", "compile"),
            ("junit:junit", "[4.13,5)", "test"),
            ("com.acme:extra", "managed", "runtime, optional"),
            ("a&b:c", "${lib.version}", "compile"),
        ];
        let expected: Vec<(String, String, String)> =
            expected.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn hostile_or_broken_poms_give_none() {
        assert!(pom_dependencies(b"<!DOCTYPE x [<!ENTITY a 'b'>]><project/>").is_empty());
        assert!(pom_dependencies(b"<project><dependencies><dependency>").is_empty());
        assert!(pom_dependencies(&[0xff, 0xfe]).is_empty());
        let deep = format!("<project>{}", "<a>".repeat(100));
        assert!(pom_dependencies(deep.as_bytes()).is_empty());
    }
}
