//! Just enough DER (and BER-TLV) encoding for the virtual card: the TLVs of the PIV
//! replies and the X.509 certificates it issues (attestation root, F9, attestations).

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};

/// A TLV with a one-byte tag and a definite (short or long form) length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(len(content.len()));
    out.extend_from_slice(content);
    out
}

/// A TLV with a two-byte tag (7F49, 5F2F, ..).
pub fn tlv2(tag: u16, content: &[u8]) -> Vec<u8> {
    let mut out = tag.to_be_bytes().to_vec();
    out.extend(len(content.len()));
    out.extend_from_slice(content);
    out
}

/// A BER/DER definite length.
pub fn len(n: usize) -> Vec<u8> {
    match n {
        0..=0x7f => vec![n as u8],
        0x80..=0xff => vec![0x81, n as u8],
        0x100..=0xffff => vec![0x82, (n >> 8) as u8, n as u8],
        _ => vec![0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8],
    }
}

/// Reads one TLV (tag of one byte, or two when the low five bits are all set) from the
/// start of `b`: (tag, value, rest).
pub fn read_tlv(b: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    let (&t0, mut rest) = b.split_first()?;
    let mut tag = u16::from(t0);
    if t0 & 0x1f == 0x1f {
        let (&t1, r) = rest.split_first()?;
        tag = (tag << 8) | u16::from(t1);
        rest = r;
    }
    let (&l0, r) = rest.split_first()?;
    rest = r;
    let n = match l0 {
        0..=0x7f => usize::from(l0),
        0x81..=0x83 => {
            let k = usize::from(l0 - 0x80);
            if rest.len() < k {
                return None;
            }
            let n = rest[..k]
                .iter()
                .fold(0usize, |a, &x| (a << 8) | usize::from(x));
            rest = &rest[k..];
            n
        }
        _ => return None,
    };
    if rest.len() < n {
        return None;
    }
    Some((tag, &rest[..n], &rest[n..]))
}

/// All TLVs of `b` in order; None when `b` is not a clean sequence of TLVs.
pub fn read_all(mut b: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (t, v, rest) = read_tlv(b)?;
        out.push((t, v));
        b = rest;
    }
    Some(out)
}

pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

pub fn set(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x31, &parts.concat())
}

/// An OBJECT IDENTIFIER from its dotted form.
///
/// Panics on a malformed OID: every caller passes a constant of this crate.
pub fn oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted
        .split('.')
        // Constants only (see above): a bad one is a bug here, not input.
        .map(|a| a.parse().expect("numeric OID arc"))
        .collect();
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        body.extend(tmp);
    };
    push(arcs[0] * 40 + arcs[1]);
    for &a in &arcs[2..] {
        push(a);
    }
    tlv(0x06, &body)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub fn uint(be: &[u8]) -> Vec<u8> {
    let mut b: &[u8] = be;
    while b.len() > 1 && b[0] == 0 {
        b = &b[1..];
    }
    let mut body = Vec::with_capacity(b.len() + 1);
    if b.is_empty() || b[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(b);
    tlv(0x02, &body)
}

pub fn octets(b: &[u8]) -> Vec<u8> {
    tlv(0x04, b)
}

pub fn bits(b: &[u8]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(b);
    tlv(0x03, &body)
}

pub fn utf8(s: &str) -> Vec<u8> {
    tlv(0x0c, s.as_bytes())
}

/// A Name of RDNs, each one attribute: (OID, UTF8String value).
pub fn name(rdns: &[(&str, &str)]) -> Vec<u8> {
    let parts: Vec<Vec<u8>> = rdns
        .iter()
        .map(|(o, v)| set(&[&seq(&[&oid(o), &utf8(v)])]))
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    seq(&refs)
}

/// A Name with one common name.
pub fn cn(common_name: &str) -> Vec<u8> {
    name(&[("2.5.4.3", common_name)])
}

pub const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
pub const OID_P256: &str = "1.2.840.10045.3.1.7";
pub const OID_P384: &str = "1.3.132.0.34";
pub const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";

/// SubjectPublicKeyInfo of an uncompressed EC point on the named curve.
pub fn ec_spki(curve_oid: &str, point: &[u8]) -> Vec<u8> {
    seq(&[
        &seq(&[&oid(OID_EC_PUBLIC_KEY), &oid(curve_oid)]),
        &bits(point),
    ])
}

/// One X.509 v3 extension.
pub fn extension(id: &str, critical: bool, value: &[u8]) -> Vec<u8> {
    if critical {
        seq(&[&oid(id), &tlv(0x01, &[0xff]), &octets(value)])
    } else {
        seq(&[&oid(id), &octets(value)])
    }
}

/// The extensions of a CA certificate: basicConstraints CA:TRUE and keyUsage
/// keyCertSign + cRLSign, both critical.
pub fn ca_extensions() -> Vec<Vec<u8>> {
    vec![
        extension("2.5.29.19", true, &seq(&[&tlv(0x01, &[0xff])])),
        // keyUsage: bits 5 (keyCertSign) and 6 (cRLSign) -> 0x06, one unused bit.
        extension("2.5.29.15", true, &[0x03, 0x02, 0x01, 0x06]),
    ]
}

/// What a certificate says about itself; signed with ECDSA P-256 / SHA-256.
pub struct CertSpec<'a> {
    pub serial: &'a [u8],
    pub issuer: &'a [u8],
    pub subject: &'a [u8],
    pub spki: &'a [u8],
    pub extensions: Vec<Vec<u8>>,
}

/// A DER X.509 certificate signed by `issuer_key`.
pub fn certificate(spec: &CertSpec, issuer_key: &SigningKey) -> Vec<u8> {
    let alg = seq(&[&oid(OID_ECDSA_SHA256)]);
    // Fixed like a YubiKey's: from its manufacture to far ahead (GeneralizedTime after 2049).
    let validity = seq(&[&tlv(0x17, b"160314000000Z"), &tlv(0x18, b"20520417000000Z")]);
    let exts: Vec<&[u8]> = spec.extensions.iter().map(Vec::as_slice).collect();
    let mut tbs_parts: Vec<Vec<u8>> = vec![
        tlv(0xa0, &uint(&[2])),
        uint(spec.serial),
        alg.clone(),
        spec.issuer.to_vec(),
        validity,
        spec.subject.to_vec(),
        spec.spki.to_vec(),
    ];
    if !exts.is_empty() {
        tbs_parts.push(tlv(0xa3, &seq(&exts)));
    }
    let refs: Vec<&[u8]> = tbs_parts.iter().map(Vec::as_slice).collect();
    let tbs = seq(&refs);
    let sig: DerSignature = issuer_key.sign(&tbs);
    seq(&[&tbs, &alg, &bits(sig.as_bytes())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_and_lengths() {
        assert_eq!(
            oid("1.2.840.10045.2.1"),
            [6, 7, 0x2a, 0x86, 0x48, 0xce, 0x3d, 2, 1]
        );
        assert_eq!(
            oid("1.3.6.1.4.1.41482.3.3")[2..],
            [0x2b, 6, 1, 4, 1, 0x82, 0xc4, 0x0a, 3, 3]
        );
        assert_eq!(len(0x7f), [0x7f]);
        assert_eq!(len(0x80), [0x81, 0x80]);
        assert_eq!(len(0x1234), [0x82, 0x12, 0x34]);
        assert_eq!(uint(&[0x80]), [2, 2, 0, 0x80]);
        assert_eq!(uint(&[0, 0, 5]), [2, 1, 5]);
    }

    #[test]
    fn reads_back_tlvs() {
        let mut b = tlv2(0x7f49, &[1; 200]);
        b.extend(tlv(0x53, &[]));
        let all = read_all(&b).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, 0x7f49);
        assert_eq!(all[0].1.len(), 200);
        assert_eq!(all[1], (0x53, &[][..]));
        assert!(read_tlv(&[0x53, 0x05, 1]).is_none());
    }
}
