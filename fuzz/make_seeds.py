#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from tests/fixtures (run from anywhere).

Needs only Python 3 and the openssl CLI (to re-encrypt the fixture keys under the keyfile
target's fixed passphrase and to write unencrypted forms). Protobuf seeds are encoded by
hand (field numbers from proto/proto/*.proto). Seeds are named seed-*, so a later
`cargo fuzz cmin` keeps or drops them like any other corpus entry.
"""
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
META = os.path.join(FIX, "notary-0.7", "metadata")
KEYS = os.path.join(FIX, "notary-0.7", "keys")
GUN = "example.com/app"
FUZZ_PASS = "fuzz-passphrase"  # keyfile.rs PASS
KEY_FILES = {  # test keys of the fixture repository (see its README)
    "15c14862492972614909e9d1905db060278a00043974b966b9cde5940b8fe493.key": "test-snapshot-passphrase",
    "4887b4aa2cb6bff5e64a33424e07bd6333faefd023a05ae86f0cae2dcecce4f9.key": "test-targets-passphrase",
    "6c8afbe159c6ec668099a2529f3e8b4fcccac34dbccf82e296fbe38821102d6c.key": "test-root-passphrase",
}
ROLE_KEY = {
    "root": "c78536bb57a473cfc8d0c5b8c358e4dcb18d3b26766884041d22aa4b0d26e717",
    "targets": "4887b4aa2cb6bff5e64a33424e07bd6333faefd023a05ae86f0cae2dcecce4f9",
    "snapshot": "15c14862492972614909e9d1905db060278a00043974b966b9cde5940b8fe493",
    "timestamp": "48bcae89f6979077fd18e5b6e03ffc09cd6c2677b6dbadf0a9f48c863abc883c",
}
SEP = b"\n%%\n"  # metadata.rs SEP


def read(*p):
    with open(os.path.join(*p), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- protobuf, by hand -------------------------------------------------------------------
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


def vi(field, n):
    return varint(field << 3) + varint(n)


def openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


def strip_headers(pem):
    return b"\n".join(l for l in pem.splitlines() if l and b":" not in l) + b"\n"


def add_headers(pem, headers):
    first, rest = pem.split(b"\n", 1)
    return first + b"\n" + headers + b"\n" + rest


def cjson(obj):
    """Notary's canonical JSON for ASCII-only data without control characters."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def synthetic_repo():
    """A complete repository for GUN example.com/app with delegations targets/releases and
    targets/releases/qa, signed with fixed throwaway keys (so the verifier's delegation walk
    is reachable from a seed). Needs the Python `cryptography` package."""
    import base64
    import datetime
    import hashlib
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import NameOID

    b64 = lambda b: base64.b64encode(b).decode()
    priv = {n: ec.derive_private_key(1000 + i, ec.SECP256R1()) for i, n in
            enumerate(["root", "targets", "snapshot", "timestamp", "releases", "qa"])}
    spki = lambda k: k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GUN)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(priv["root"].public_key()).serial_number(1)
            .not_valid_before(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(datetime.datetime(2036, 1, 1, tzinfo=datetime.timezone.utc))
            .sign(priv["root"], hashes.SHA256()))
    tuf = {n: {"keytype": "ecdsa", "keyval": {"private": None, "public": b64(spki(k))}} for n, k in priv.items()}
    tuf["root"] = {"keytype": "ecdsa-x509",
                   "keyval": {"private": None, "public": b64(cert.public_bytes(serialization.Encoding.PEM))}}
    kid = {n: hashlib.sha256(cjson(v)).hexdigest() for n, v in tuf.items()}

    def sign(name, signed):
        r, s = decode_dss_signature(priv[name].sign(cjson(signed), ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return cjson({"signed": signed, "signatures": [{"keyid": kid[name], "method": "ecdsa", "sig": b64(sig)}]})

    def meta(b):
        return {"length": len(b), "hashes": {"sha256": b64(hashlib.sha256(b).digest()),
                                             "sha512": b64(hashlib.sha512(b).digest())}}

    exp = "2030-01-01T00:00:00Z"
    target = lambda data: {"length": len(data), "hashes": {"sha256": b64(hashlib.sha256(data).digest())}}
    files = {}
    files["root"] = sign("root", {
        "_type": "Root", "consistent_snapshot": False, "expires": exp, "version": 1,
        "keys": {kid[n]: tuf[n] for n in ["root", "targets", "snapshot", "timestamp"]},
        "roles": {n: {"keyids": [kid[n]], "threshold": 1} for n in ["root", "targets", "snapshot", "timestamp"]},
    })
    files["targets"] = sign("targets", {
        "_type": "Targets", "expires": exp, "version": 3, "targets": {"v1": target(b"one")},
        "delegations": {"keys": {kid["releases"]: tuf["releases"]},
                        "roles": [{"name": "targets/releases", "keyids": [kid["releases"]], "threshold": 1, "paths": [""]}]},
    })
    files["targets/releases"] = sign("releases", {
        "_type": "Targets", "expires": exp, "version": 2, "targets": {"v2": target(b"two"), "latest": target(b"two")},
        "delegations": {"keys": {kid["qa"]: tuf["qa"]},
                        "roles": [{"name": "targets/releases/qa", "keyids": [kid["qa"]], "threshold": 1, "paths": ["qa-"]}]},
    })
    files["targets/releases/qa"] = sign("qa", {
        "_type": "Targets", "expires": exp, "version": 1,
        "targets": {"qa-1": target(b"qa"), "outside": target(b"x")},
        "delegations": {"keys": {}, "roles": []},
    })
    files["snapshot"] = sign("snapshot", {
        "_type": "Snapshot", "expires": exp, "version": 4,
        "meta": {n: meta(files[n]) for n in ["root", "targets", "targets/releases", "targets/releases/qa"]},
    })
    files["timestamp"] = sign("timestamp", {
        "_type": "Timestamp", "expires": exp, "version": 5, "meta": {"snapshot": meta(files["snapshot"])},
    })
    return files


def main():
    roles = ["root", "targets", "snapshot", "timestamp"]
    docs = {r: read(META, r + ".json") for r in roles}

    # cjson
    for r, d in docs.items():
        write("cjson", r + ".json", d)
    write("cjson", "timestamp.key", read(META, "timestamp.key"))
    snippets = [
        b'{"b":1,"a":[true,null,"x\\"\\\\\\n\\u0001"],"\xc3\xa9":0,"B":{},"":-0}',
        b"[4096.0, -5, 18446744073709551615, -9223372036854775808, 1e3, 1.5]",
        b'"\\ud83d\\ude00 <&> \\u0000"',
        b'{"a":{"a":{"a":[[[]]]}}, "a":2}',
    ]
    for i, s in enumerate(snippets):
        write("cjson", f"snippet{i}.json", s)

    # metadata: the whole repository, each file alone, and a delegation shape
    write("metadata", "repo", SEP.join(docs[r] for r in roles))
    for r in roles:
        write("metadata", "only-" + r, b"@" + r.encode() + b"\n" + docs[r])
    t = json.loads(docs["targets"])
    t["signed"]["delegations"] = {
        "keys": {ROLE_KEY["targets"]: json.loads(docs["root"])["signed"]["keys"][ROLE_KEY["targets"]]},
        "roles": [{"name": "targets/releases", "keyids": [ROLE_KEY["targets"]], "threshold": 1, "paths": [""]}],
    }
    deleg = {"signed": dict(t["signed"], delegations={"keys": {}, "roles": []}), "signatures": []}
    write(
        "metadata",
        "delegation",
        SEP.join([docs["root"], json.dumps(t).encode(), docs["snapshot"], docs["timestamp"], json.dumps(deleg).encode()]),
    )

    try:
        syn = synthetic_repo()
    except ImportError:
        syn = None
        print("python cryptography missing: no synthetic repository seeds")
    if syn:
        order = ["root", "targets", "snapshot", "timestamp", "targets/releases", "targets/releases/qa"]
        write("metadata", "synthetic-repo", SEP.join(syn[r] for r in order))
        write("metadata", "synthetic-named", SEP.join(b"@" + r.encode() + b"\n" + syn[r] for r in reversed(order)))
        write("cjson", "synthetic-targets", syn["targets/releases"])

    # keyfile: the fixture files as they are, re-encrypted under the fixed passphrase (with
    # notary's headers), unencrypted PKCS#8 and SEC1, legacy DEK-Info, public PEMs
    for name, pw in KEY_FILES.items():
        orig = read(KEYS, name)
        write("keyfile", name, orig)
        headers = b"\n".join(l for l in orig.splitlines() if b":" in l) + b"\n"
        bare = strip_headers(orig)
        enc = openssl("pkcs8", "-topk8", "-passin", "pass:" + pw, "-v2", "aes-256-cbc", "-v2prf",
                      "hmacWithSHA1", "-iter", "2048", "-passout", "pass:" + FUZZ_PASS, stdin=bare)
        write("keyfile", "fuzzpass-" + name, add_headers(enc, headers))
        write("keyfile", "pkcs8-" + name, add_headers(openssl("pkcs8", "-topk8", "-nocrypt", "-passin", "pass:" + pw, stdin=bare), headers))
        write("keyfile", "sec1-" + name, openssl("ec", "-passin", "pass:" + pw, stdin=bare))
    legacy = read(FIX, "keytypes", "legacy.key")
    write("keyfile", "legacy.key", legacy)
    for c in ["aes128", "aes192", "aes256"]:
        write("keyfile", f"legacy-{c}.key", openssl("ec", "-passin", "pass:legacy-pass", "-" + c, "-passout", "pass:" + FUZZ_PASS, stdin=legacy))
    write("keyfile", "rsa.crt.pem", read(FIX, "keytypes", "rsa.crt.pem"))
    write("keyfile", "p384.pub.pem", openssl("pkey", "-pubin", "-inform", "DER", stdin=read(FIX, "keytypes", "p384.spki.der")))

    # grpc_decode
    for r in roles:
        req = ld(1, docs[r]) + ld(2, ROLE_KEY[r]) + ld(3, r) + ld(4, GUN)
        write("grpc_decode", "sign-" + r, req)
    write("grpc_decode", "sign-batch", b"".join(ld(1, ld(1, docs[r]) + ld(2, ROLE_KEY[r][:12])) for r in ["targets", "snapshot"]))
    verify = ld(1, GUN) + b"".join(ld(2, ld(1, r) + ld(2, docs[r])) for r in roles)
    write("grpc_decode", "verify", verify + ld(3, "2026-11-23T00:00:00Z") + ld(4, ROLE_KEY["root"]))
    if syn:
        req = ld(1, GUN) + b"".join(ld(2, ld(1, r) + ld(2, b)) for r, b in syn.items())
        write("grpc_decode", "verify-synthetic", req + ld(3, "2027-01-01T00:00:00+01:00"))
        write("grpc_decode", "sign-delegation", ld(1, syn["targets/releases"]) + ld(3, "targets/releases") + ld(4, GUN))
    name = "4887b4aa2cb6bff5e64a33424e07bd6333faefd023a05ae86f0cae2dcecce4f9.key"
    write("grpc_decode", "import", ld(1, read(KEYS, name)) + ld(2, KEY_FILES[name]) + ld(3, "targets") + ld(4, GUN))
    write("grpc_decode", "signer-add", ld(1, ld(1, "https://notary.example:4443") + vi(3, 1)) + ld(2, GUN) + ld(3, "releases")
          + ld(4, read(FIX, "keytypes", "rsa.crt.pem")))
    write("grpc_decode", "trust-sign", ld(2, GUN) + ld(3, "v1") + ld(4, "ab" * 32) + vi(5, 16) + ld(10, ld(1, "latest") + ld(2, "cd" * 32)))
    ts_signed = json.dumps(json.loads(docs["timestamp"])["signed"], separators=(",", ":"), sort_keys=True)
    write("grpc_decode", "notary-sign", ld(1, ld(1, ROLE_KEY["timestamp"])) + ld(2, ts_signed))
    write("grpc_decode", "notary-create", ld(1, "ecdsa") + ld(2, GUN) + ld(3, "timestamp"))


if __name__ == "__main__":
    main()
