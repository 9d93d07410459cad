//! Key administration that the audit log records like signatures: a key made, imported
//! or attested is recorded, and an import the log cannot take is undone.

use super::audit::Event;
use super::Guard;
use crate::error::{Error, Result};
use crate::keys::{check_gun, check_role, KeyEntry, Token};
use crate::tuf::keyfile::ImportedKey;

impl Guard {
    /// Records an action on `key` (made, attested, imported) on `token`.
    pub async fn record_key(
        &self,
        action: &'static str,
        key: &KeyEntry,
        token: &str,
    ) -> Result<()> {
        self.audit()
            .record(Event {
                key_id: key.key_id.clone(),
                role: key.role.clone(),
                gun: key.gun.clone().unwrap_or_default(),
                outcome: format!("ok, token {token}"),
                ..Event::new(action)
            })
            .await
    }

    /// Puts a decrypted key file's key on `token` as `role` / `gun` (each as asked, else
    /// as the file says; root keys have no GUN). Refused while the audit log cannot be
    /// written; taken off the token again when its record fails.
    pub async fn import_key(
        &self,
        token: &Token,
        key: ImportedKey,
        role: Option<String>,
        gun: Option<String>,
    ) -> Result<KeyEntry> {
        let role = role
            .or_else(|| key.role.clone())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument("the key file names no role: pass --role".into())
            })?;
        check_role(&role)?;
        let gun = if role == "root" {
            None
        } else {
            gun.or_else(|| key.gun.clone())
        };
        match &gun {
            Some(g) => check_gun(g)?,
            None if role != "root" => {
                return Err(Error::InvalidArgument(format!(
                    "a {role} key needs a GUN: pass --gun"
                )))
            }
            None => {}
        }
        if let Some(e) = self.audit().state().error {
            return Err(Error::Unavailable(format!(
                "the audit log cannot be written ({e}); nothing is imported"
            )));
        }
        let entry = token
            .run(move |b| b.import(&role, gun.as_deref(), &key))
            .await?;
        self.keys().invalidate();
        tracing::info!(token = %token.label, key_id = %entry.key_id, role = %entry.role, "imported key");
        let Err(e) = self.record_key("import_key", &entry, &token.label).await else {
            return Ok(entry);
        };
        // Unrecorded, the key must not stay: take it off the token again.
        let k = entry.clone();
        let removed = token.run(move |b| b.delete(&k)).await;
        self.keys().invalidate();
        Err(match removed {
            Ok(()) => {
                tracing::warn!(key_id = %entry.key_id, "import not recorded: key removed again");
                e
            }
            Err(d) => {
                tracing::error!(key_id = %entry.key_id, "import not recorded, and the key could not be removed: {d}");
                Error::Unavailable(format!(
                    "{e}; and the imported key {} could not be removed again: {d}",
                    entry.key_id
                ))
            }
        })
    }
}
