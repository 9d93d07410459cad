//! Image names and what they name: Docker's repository name (the GUN) of an image, its
//! tag, and a finished ceremony's root for a GUN. Shared by `dct trust` and `dct ceremony`.

use std::path::Path;

use serde_json::Value;

use crate::client::Failure;

/// Docker's repository name for `name`: a first component without `.` or `:` (and not
/// `localhost`) is on Docker Hub, `docker.io/`, with `library/` for one-component names.
pub fn gun_of(name: &str) -> String {
    let first = name.split('/').next().unwrap_or_default();
    let has_host =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

/// Splits `IMAGE[:TAG]` (a `:` after the last `/` starts the tag).
pub fn split_tag(image: &str) -> (String, Option<String>) {
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            Some(image[slash + i + 1..].to_string()),
        ),
        None => (image.to_string(), None),
    }
}

/// The finished root of a ceremony for `gun`.
pub fn final_root(dir: &Path, gun: &str) -> Result<Vec<u8>, Failure> {
    let ceremony: Value = serde_json::from_slice(&read(&dir.join("ceremony.json"))?)
        .map_err(|e| Failure::failed(format!("ceremony.json: {e}")))?;
    if ceremony["gun"].as_str() != Some(gun) {
        return Err(Failure::usage(format!(
            "the ceremony in {} is for {}, not {gun}",
            dir.display(),
            ceremony["gun"]
        )));
    }
    std::fs::read(dir.join("root.final.json")).map_err(|_| {
        Failure::failed(format!(
            "{} has no root.final.json: run dct ceremony finish {} first",
            dir.display(),
            dir.display()
        ))
    })
}

fn read(p: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(p).map_err(|e| Failure::failed(format!("cannot read {}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names() {
        assert_eq!(gun_of("alpine"), "docker.io/library/alpine");
        assert_eq!(gun_of("me/app"), "docker.io/me/app");
        assert_eq!(
            gun_of("registry.example.com/app"),
            "registry.example.com/app"
        );
        assert_eq!(gun_of("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(
            split_tag("host:5000/app:v1"),
            ("host:5000/app".into(), Some("v1".into()))
        );
        assert_eq!(split_tag("host:5000/app"), ("host:5000/app".into(), None));
    }
}
