//! What a version's stored metadata says beyond its files, for the management API: its
//! dependencies and readme, where the format carries them (npm's manifest, PyPI's core
//! metadata, Cargo's publish metadata, NuGet's `.nuspec`). Pure.

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
    /// `runtime`, `dev`, `peer`, `optional`, `build`, or a NuGet target framework.
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
}
