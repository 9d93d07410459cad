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
    if meta.uid() != nix::unistd::getuid().as_raw() || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "PIN file {} must belong to this user and not be readable by others (chmod 600)",
            path.display()
        ));
    }
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
