//! A client of notary-signer's gRPC API over mutual TLS, for the tests and the benchmark:
//! the same code drives the real notary-signer and the agent's `[notary_signer]`.

use std::path::Path;

use dct_proto::notary::key_management_client::KeyManagementClient;
use dct_proto::notary::signer_client::SignerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A channel to 127.0.0.1:`port`, trusting `pki`'s CA; with `pki`'s leaf as client
/// certificate when `client_cert`.
pub async fn channel(
    port: u16,
    pki: &Path,
    client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let read = |f: &str| std::fs::read(pki.join(f)).expect("test PKI file");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .domain_name("127.0.0.1");
    if client_cert {
        tls = tls.identity(Identity::from_pem(read("leaf.crt"), read("leaf.key")));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("endpoint")
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect()
        .await
}

pub fn clients(ch: Channel) -> (KeyManagementClient<Channel>, SignerClient<Channel>) {
    (KeyManagementClient::new(ch.clone()), SignerClient::new(ch))
}
