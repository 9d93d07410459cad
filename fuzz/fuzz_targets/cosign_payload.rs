//! What cosign asks a KMS plugin to sign, as the agent parses it
//! (`dct_agent::guard::oci::cosign::parse`): any bytes.
//!
//! Nothing may panic. A payload that starts `DSSEv1 ` is a DSSE statement or refused,
//! never a blob; one accepted as an image signature names a `sha256:` digest of 64
//! lowercase hex digits, and a simple-signing payload a repository; a blob has no
//! repository and its digest in the same form; every result has lines to show.
#![no_main]

use dct_agent::guard::oci::cosign::parse;
use dct_agent::guard::oci::Kind;
use libfuzzer_sys::fuzz_target;

fn digest_form(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(p) = parse(data) else { return };
    assert!(digest_form(&p.artifact), "{}", p.artifact);
    assert!(!p.lines.is_empty());
    match p.kind {
        Kind::CosignSimpleSigning => assert!(!p.repository.is_empty()),
        Kind::CosignDsse => {}
        Kind::Blob => {
            assert!(p.repository.is_empty());
            assert!(!data.starts_with(b"DSSEv1 "));
        }
        k => panic!("a cosign payload parsed as {k:?}"),
    }
});
