//! Placeholder for the confirmation program (replaced by the real module).
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
        Err(Error::Refused("no confirmation program".into()))
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
