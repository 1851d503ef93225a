//! The commands that install a version, for each client of its format: `wharf login` to
//! point the client at the Repository (the lines it writes are the ones its `--tool`
//! documents), then the client's own install command.

use wharf_api::PackageFormat;

/// One client's way to install a version.
pub struct Snippet {
    pub client: &'static str,
    pub text: String,
}

/// How `wharf login` gets its credential on this Domain: a browser sign-in where people
/// sign in with an identity provider, a Kubernetes user token where those are exchanged,
/// else a registry token from the environment.
pub fn credential_flag(sign_in: bool, kubernetes_users: bool) -> &'static str {
    if sign_in {
        "--sign-in"
    } else if kubernetes_users {
        "--kubeconfig"
    } else {
        "--token-env WHARF_TOKEN"
    }
}

/// The snippets for `name` at `version` in `repository` of the registry at `base`;
/// `file` is a file of the version (the generic format downloads one).
pub fn snippets(
    format: PackageFormat,
    base: &str,
    repository: &str,
    name: &str,
    version: &str,
    file: Option<&str>,
    credential: &str,
) -> Vec<Snippet> {
    let login =
        |tool: &str| format!("wharf login --tool {tool} --registry {base} --repository {repository} {credential}");
    let with_login = |client: &'static str, tool: &str, install: String| Snippet {
        client,
        text: format!("{}\n{install}", login(tool)),
    };
    match format {
        PackageFormat::Npm => vec![
            with_login("npm", "npm", format!("npm install {name}@{version}")),
            with_login("pnpm", "npm", format!("pnpm add {name}@{version}")),
            with_login("Yarn", "yarn", format!("yarn add {name}@{version}")),
        ],
        PackageFormat::Pypi => vec![
            with_login("pip", "pip", format!("pip install '{name}=={version}'")),
            with_login("uv", "uv", format!("uv add '{name}=={version}'")),
            with_login("Poetry", "poetry", format!("poetry add '{name}=={version}' --source wharf")),
        ],
        PackageFormat::Cargo => {
            vec![with_login("cargo", "cargo", format!("cargo add {name}@={version} --registry wharf"))]
        }
        PackageFormat::Go => vec![with_login("go", "go", format!("go get {name}@{version}"))],
        PackageFormat::Maven => {
            let (group, artifact) = name.split_once(':').unwrap_or(("", name));
            vec![with_login(
                "Maven",
                "mvn",
                format!(
                    "<dependency>\n  <groupId>{group}</groupId>\n  <artifactId>{artifact}</artifactId>\n  <version>{version}</version>\n</dependency>"
                ),
            )]
        }
        PackageFormat::Nuget => vec![
            with_login("dotnet", "nuget", format!("dotnet add package {name} --version {version}")),
            with_login("nuget.exe", "nuget", format!("nuget install {name} -Version {version}")),
        ],
        PackageFormat::Swift => vec![Snippet {
            client: "SwiftPM",
            text: format!(
                "swift package-registry set {base}/swift/{repository}\n.package(id: \"{name}\", exact: \"{version}\")"
            ),
        }],
        PackageFormat::Generic => vec![Snippet {
            client: "curl",
            text: format!(
                "export WHARF_TOKEN=$(wharf token --registry {base} --repository {repository} {credential})\ncurl -fLO -H \"Authorization: Bearer $WHARF_TOKEN\" {base}/generic/{repository}/{name}/{version}/{}",
                file.unwrap_or("FILE")
            ),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_a_snippet_naming_the_repository() {
        for format in PackageFormat::ALL {
            let snippets = snippets(format, "https://wharf.test", "prod", "pkg", "1.0.0", Some("a.bin"), "--sign-in");
            assert!(!snippets.is_empty(), "{format:?}");
            for snippet in snippets {
                assert!(snippet.text.contains("prod"), "{format:?}: {}", snippet.text);
                assert!(snippet.text.contains("1.0.0"), "{format:?}: {}", snippet.text);
            }
        }
        let npm = &snippets(
            PackageFormat::Npm,
            "http://127.0.0.1:1",
            "app",
            "@acme/x",
            "2.0.0",
            None,
            "--token-env WHARF_TOKEN",
        )[0];
        assert_eq!(
            npm.text,
            "wharf login --tool npm --registry http://127.0.0.1:1 --repository app --token-env WHARF_TOKEN\nnpm install @acme/x@2.0.0"
        );
    }
}
