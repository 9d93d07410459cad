//! `sigstore-kms-dct`: cosign's KMS plugin for keys behind dct-agent. With it on PATH,
//! `cosign sign --key dct://KEYID IMAGE` signs on the agent's token (see
//! `dct_cli::cosign`). cosign runs it once per call: the protocol version and a JSON
//! request as arguments, the message on stdin; the answer (or `errorMessage`) on stdout.
//! The agent's socket: DCT_SOCKET, else the default, as for `dct`.
#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

use dct_cli::client::{self, Target};
use dct_cli::cosign;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut stdin = Vec::new();
    // Run by hand without a request: the usage, without waiting on the terminal.
    let read = if args.len() < 2 {
        Ok(0)
    } else {
        std::io::stdin().read_to_end(&mut stdin)
    };
    let response = match read {
        Err(e) => serde_json::json!({"errorMessage": format!("dct: cannot read the message: {e}")}),
        Ok(_) => {
            let target = Target {
                socket: std::env::var_os("DCT_SOCKET")
                    .map(Into::into)
                    .unwrap_or_else(client::default_socket_path),
                agent_uid: std::env::var("DCT_AGENT_UID")
                    .ok()
                    .and_then(|u| u.parse().ok()),
            };
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(cosign::plugin(&args, &stdin, &target)),
                Err(e) => serde_json::json!({"errorMessage": format!("dct: cannot start: {e}")}),
            }
        }
    };
    // cosign ignores the exit status and reads errors from the JSON; the status is for
    // people running the plugin by hand.
    println!("{response}");
    if response.get("errorMessage").is_some() {
        ExitCode::from(client::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
