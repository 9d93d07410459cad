//! Confirmation a client cannot forge: the agent asks the user itself, through a program
//! named only in its own configuration (`[confirm] program`, pinentry's Assuan CONFIRM).
//!
//! This release has the seam and the refusal: a key whose policy says `confirm = true`
//! signs nothing until a confirmation program is configured and says yes; no client can
//! approve on the user's behalf. The Assuan client itself is not in this build yet, so every
//! such request is refused, naming why.
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfirmConfig {
    pub program: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    pub timeout: Option<String>,
}

pub struct Confirmer;

pub enum Approval {
    Program { program: String },
}

impl Approval {
    pub fn describe(&self) -> String {
        match self {
            Approval::Program { program } => format!("confirmed by {program}"),
        }
    }
}

impl Confirmer {
    pub fn new(_cfg: &ConfirmConfig) -> Confirmer {
        Confirmer
    }
    pub async fn ask(&self, _title: &str, _lines: &[String]) -> Result<Approval> {
        Err(Error::Refused(
            "policy (confirm): this key signs only after the user confirmed through the agent's \
             confirmation program ([confirm] program in agent.toml), which this build cannot run \
             yet; nothing is signed"
                .into(),
        ))
    }
}

pub struct Subject {
    pub role: String,
    pub gun: String,
    pub version: u64,
    pub expires: String,
    pub key_id: String,
    pub sha256_hex: String,
}

pub fn summary(
    s: &Subject,
    _previous: Option<&serde_json::Value>,
    _new: &serde_json::Value,
) -> Vec<String> {
    vec![s.role.clone()]
}
