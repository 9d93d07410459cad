//! The registry client's tag listing against the real docker-registry: only signature tags
//! are answered from it, every listed one is found, and forgetting it asks again. (The page
//! size is asked for; docker-registry 2.8 may answer with every tag at once. Following a
//! `Link` to the next page is unit-tested in agent/src/oci/registry.rs.)

use dct_agent::oci::registry::Session;
use dct_tests::registry::Registry;

#[test]
fn the_tag_listing_answers_only_for_signature_tags_until_forgotten() {
    let pki = dct_tests::notary::pki();
    let registry = Registry::start_with_pki(pki.path());
    let base = registry.push("team/listed", "v0", "listing");
    let sig = |c: char| format!("sha256-{}", c.to_string().repeat(64));
    // Seven tags, two of them signature tags, asked for two a page.
    for tag in ["v1", "v2", "v3", "v4"] {
        registry.put_manifest("team/listed", tag, &base);
    }
    registry.put_manifest("team/listed", &sig('a'), &base);
    registry.put_manifest("team/listed", &format!("{}.sig", sig('b')), &base);
    let ca = std::fs::read(pki.path().join("ca.crt")).unwrap();
    let gun = format!("{}/team/listed", registry.host);
    let session = Session::open(&gun, Some(&ca), None, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        session.list_tags_by(2).await.unwrap();
        // Added after the listing: a signature tag is answered from it (absent), any other
        // tag is asked for.
        registry.put_manifest("team/listed", &sig('c'), &base);
        registry.put_manifest("team/listed", "v5", &base);
        assert!(session.manifest(&sig('c')).await.unwrap().is_none());
        assert!(session.manifest("v5").await.unwrap().is_some());
        // Listed: found.
        assert!(session.manifest(&sig('a')).await.unwrap().is_some());
        let dot_sig = format!("{}.sig", sig('b'));
        assert!(session.manifest(&dot_sig).await.unwrap().is_some());
        // Forgotten: asked again.
        session.forget_tags();
        assert!(session.manifest(&sig('c')).await.unwrap().is_some());
    });
}
