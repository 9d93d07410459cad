//! `notation-dct`: Notation's plugin (contract 1.0, `SIGNATURE_GENERATOR.RAW`) for keys
//! behind dct-agent. Thin, like `dct`: it reads Notation's request, asks the agent over
//! its socket, and answers. The agent parses what it signs, applies its policy, asks for
//! confirmation where the policy says, signs on the token and audits; the plugin holds no
//! key, PIN or secret (pluginConfig carries none: a PIN goes to `dct unlock`).
//!
//! Installed as `$XDG_CONFIG_HOME/notation/plugins/dct/notation-dct` by
//! `dct notation install`. The agent's socket: pluginConfig `socket`, else `DCT_SOCKET`,
//! else the default (`$XDG_RUNTIME_DIR/dct-agent/agent.sock`).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;

use base64::Engine;
use dct_cli::client::{self, Client, Failure};
use dct_proto::dct::v1 as pb;
use serde_json::{json, Value};

const CONTRACT: &str = "1.0";

/// A plugin error as Notation reads it (on stderr, exit status 1).
struct PluginError {
    code: &'static str,
    message: String,
}

fn validation(m: impl Into<String>) -> PluginError {
    PluginError {
        code: "VALIDATION_ERROR",
        message: m.into(),
    }
}

/// The agent's failure in Notation's terms, chosen on the agent's machine-readable reason.
fn from_failure(f: Failure) -> PluginError {
    let mut message = f.message;
    // The agent's own messages already say what to run; the CLI's hint is for the rest.
    if let Some(h) = f.hint.filter(|_| !message.contains("dct ")) {
        message.push_str(&format!(" ({h})"));
    }
    let code = match f.reason.as_deref() {
        // The agent's message names the token: "run dct unlock --token X".
        Some("locked") | Some("pin_locked") | Some("wrong_pin") | Some("final_try") => {
            "ACCESS_DENIED"
        }
        Some("refused") => "ACCESS_DENIED",
        Some("not_found") | Some("invalid_argument") => "VALIDATION_ERROR",
        Some("resource_exhausted") => "THROTTLED",
        _ => "ERROR",
    };
    if f.reason.as_deref() == Some("locked") && !message.contains("dct unlock") {
        message.push_str("; unlock it with `dct unlock`");
    }
    PluginError { code, message }
}

fn main() -> ExitCode {
    let command = std::env::args().nth(1).unwrap_or_default();
    let result = read_request().and_then(|req| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PluginError {
                code: "ERROR",
                message: format!("cannot start: {e}"),
            })?;
        runtime.block_on(run(&command, &req))
    });
    match result {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            // Nothing to do about a closed stdout but fail.
            if writeln!(out, "{v}").is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let body = json!({"errorCode": e.code, "errorMessage": e.message});
            eprintln!("{body}");
            ExitCode::from(1)
        }
    }
}

fn read_request() -> Result<Value, PluginError> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| validation(format!("cannot read the request: {e}")))?;
    if input.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(&input).map_err(|e| validation(format!("request is not JSON: {e}")))
}

fn text<'a>(req: &'a Value, field: &str) -> Result<&'a str, PluginError> {
    req.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| validation(format!("the request has no {field}")))
}

fn check_contract(req: &Value) -> Result<(), PluginError> {
    match req.get("contractVersion").and_then(Value::as_str) {
        Some(CONTRACT) => Ok(()),
        other => Err(PluginError {
            code: "UNSUPPORTED_CONTRACT_VERSION",
            message: format!(
                "contract version {} is not supported; this plugin speaks {CONTRACT}",
                other.unwrap_or("(none)")
            ),
        }),
    }
}

async fn connect(req: &Value) -> Result<Client, PluginError> {
    let config = req.get("pluginConfig");
    let socket = config
        .and_then(|c| c.get("socket"))
        .and_then(Value::as_str)
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("DCT_SOCKET").map(Into::into))
        .unwrap_or_else(client::default_socket_path);
    let agent_uid = std::env::var("DCT_AGENT_UID")
        .ok()
        .and_then(|u| u.parse().ok());
    Client::connect(&client::Target { socket, agent_uid })
        .await
        .map_err(from_failure)
}

async fn run(command: &str, req: &Value) -> Result<Value, PluginError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    match command {
        "get-plugin-metadata" => Ok(json!({
            "name": "dct",
            "description": "Sign with keys on hardware tokens (PKCS#11, YubiKey PIV) through dct-agent",
            "version": env!("CARGO_PKG_VERSION"),
            "url": "file:///usr/share/doc/dct-agent/README.md",
            "supportedContractVersions": [CONTRACT],
            "capabilities": ["SIGNATURE_GENERATOR.RAW"],
        })),
        "describe-key" => {
            check_contract(req)?;
            let key_id = text(req, "keyId")?.to_string();
            let mut c = connect(req).await?;
            let r = c
                .call(|mut a| async move {
                    a.notation_describe_key(pb::NotationDescribeKeyRequest { key_id })
                        .await
                })
                .await
                .map_err(from_failure)?;
            // Notation names the key as its user did (a prefix is fine to the agent).
            Ok(json!({"keyId": text(req, "keyId")?, "keySpec": r.key_spec}))
        }
        "generate-signature" => {
            check_contract(req)?;
            let key_id = text(req, "keyId")?.to_string();
            let spec = text(req, "keySpec")?;
            let hash = text(req, "hashAlgorithm")?;
            if spec != "EC-256" || hash != "SHA-256" {
                return Err(validation(format!(
                    "key spec {spec} with {hash}: the agent signs EC-256 with SHA-256"
                )));
            }
            let payload = b64
                .decode(text(req, "payload")?)
                .map_err(|e| validation(format!("payload is not base64: {e}")))?;
            let mut c = connect(req).await?;
            let sign = pb::SignPayloadRequest {
                key_id,
                profile: pb::PayloadProfile::Notation.into(),
                payload,
            };
            let r = c
                .call(|mut a| async move { a.sign_payload(sign).await })
                .await
                .map_err(from_failure)?;
            if r.certificate_chain.is_empty() {
                return Err(validation(format!(
                    "key {} has no certificate chain (dct notation cert issue)",
                    r.key_id
                )));
            }
            let chain: Vec<String> = r.certificate_chain.iter().map(|c| b64.encode(c)).collect();
            Ok(json!({
                "keyId": text(req, "keyId")?,
                "signature": b64.encode(&r.signature),
                "signingAlgorithm": "ECDSA-SHA-256",
                "certificateChain": chain,
            }))
        }
        "" => Err(validation(
            "usage: notation-dct COMMAND (get-plugin-metadata, describe-key, generate-signature); \
             Notation runs it",
        )),
        other => Err(validation(format!("unsupported command {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(reason: Option<&str>, message: &str) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
            hint: Some("see `dct key list`".into()),
            reason: reason.map(Into::into),
        }
    }

    #[test]
    fn agent_reasons_become_plugin_error_codes() {
        let e = from_failure(failure(
            Some("locked"),
            "token \"t\" is locked: run dct unlock --token t",
        ));
        assert_eq!(e.code, "ACCESS_DENIED");
        assert!(e.message.contains("dct unlock --token t"), "{}", e.message);
        let e = from_failure(failure(Some("refused"), "refused: policy (oci): ..."));
        assert_eq!(e.code, "ACCESS_DENIED");
        assert!(e.message.contains("policy (oci)"));
        assert_eq!(
            from_failure(failure(Some("not_found"), "no key x")).code,
            "VALIDATION_ERROR"
        );
        assert_eq!(
            from_failure(failure(Some("invalid_argument"), "bad")).code,
            "VALIDATION_ERROR"
        );
        let e = from_failure(failure(None, "agent not running at /x"));
        assert_eq!(e.code, "ERROR");
        assert!(e.message.contains("see `dct key list`"));
    }

    #[tokio::test]
    async fn metadata_and_contract_version() {
        let m = run("get-plugin-metadata", &json!({})).await.ok().unwrap();
        assert_eq!(m["name"], "dct");
        assert_eq!(m["supportedContractVersions"], json!(["1.0"]));
        assert_eq!(m["capabilities"], json!(["SIGNATURE_GENERATOR.RAW"]));
        let e = run(
            "describe-key",
            &json!({"contractVersion": "2.0", "keyId": "k"}),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.code, "UNSUPPORTED_CONTRACT_VERSION");
        let e = run(
            "generate-signature",
            &json!({"contractVersion": "1.0", "keyId": "k", "keySpec": "RSA-2048",
                    "hashAlgorithm": "SHA-256", "payload": ""}),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.code, "VALIDATION_ERROR");
        assert_eq!(
            run("sign", &json!({})).await.err().unwrap().code,
            "VALIDATION_ERROR"
        );
    }
}
