//! PIN files: owner-only, the PIN on the first line.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Reads a PIN file that only we can read; the PIN is the first line.
pub fn read_pin_file(path: &Path) -> Result<secrecy::SecretString, String> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("PIN file {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("PIN file {}: {e}", path.display()))?;
    owner_only(&meta, "PIN file", path)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(64));
    (&mut f)
        .take(1024)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("PIN file {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("PIN file {} is not UTF-8", path.display()))?;
    let pin = text.lines().next().unwrap_or_default();
    if pin.is_empty() {
        return Err(format!("PIN file {} is empty", path.display()));
    }
    Ok(secrecy::SecretString::from(pin.to_string()))
}

/// A secret's file (PIN, key) belongs to this user and no one else may read it.
pub fn owner_only(meta: &std::fs::Metadata, what: &str, path: &Path) -> Result<(), String> {
    if meta.uid() != nix::unistd::getuid().as_raw() || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{what} {} must belong to this user and not be readable by others (chmod 600)",
            path.display()
        ));
    }
    Ok(())
}

/// As [`owner_only`], by path, without reading the secret (for checking a config).
pub fn check_owner_only(path: &Path, what: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a file", path.display()));
    }
    owner_only(&meta, what, path)
}
