//! Outbound HTTP(S) clients: the JWKS fetch (`auth.jwks_url`) and the CDN purge hook
//! (`cdn.purge_url`). One construction, so both verify certificates against the platform's
//! roots with the same rustls provider already in the tree (aws-lc-rs). Which URLs are allowed
//! (https, or http to loopback) is checked by `config` before a client is ever built.

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

/// An HTTP/1.1 client for https (and loopback http) URLs; `what` names the setting in errors.
pub fn https_client<B>(what: &str) -> Result<Client<HttpsConnector<HttpConnector>, B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| format!("{what}: TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}
