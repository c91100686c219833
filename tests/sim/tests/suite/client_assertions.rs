//! Certificate credentials at the simulated token endpoint: an assertion signed by the
//! registered certificate's key gets a token (and the token works for XOAUTH2 scope
//! checks like a secret's); a wrong certificate, an expired assertion, a wrong audience,
//! a wrong issuer and a secret-less assertion type are refused with Entra's codes.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{SCOPE, start};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mailpipe_sim::{AppCertificate, RunningSim};
use serde_json::{Value, json};
use sha2::Digest as _;

const APP: &str = "33333333-3333-3333-3333-333333333333";

fn config(cert: &AppCertificate) -> String {
    format!(
        "[[tenants]]\nid = \"contoso\"\ndomains = [\"contoso.example\"]\n[[apps]]\ntenant = \"contoso\"\nclient_id = \"{APP}\"\nclient_certificate = '''\n{}'''\nmailboxes = [\"*\"]\n",
        cert.certificate_pem
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An assertion as a client builds it, with every part adjustable.
fn assertion(
    signer: &AppCertificate,
    thumbprint_of: &AppCertificate,
    aud: &str,
    iss: &str,
    exp_in: i64,
) -> String {
    let der = rustls_pemfile::certs(&mut thumbprint_of.certificate_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.x5t_s256 = Some(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der.as_ref())),
    );
    let t = now();
    let claims = json!({
        "aud": aud, "iss": iss, "sub": iss, "jti": uuid::Uuid::new_v4().to_string(),
        "iat": t - 600, "nbf": t - 600, "exp": t + exp_in,
    });
    let key = EncodingKey::from_rsa_pem(signer.private_key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn post(sim: &RunningSim, assertion: &str, assertion_type: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(sim.token_url("contoso.example"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_assertion_type", assertion_type),
            ("client_assertion", assertion),
            ("scope", SCOPE),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn aadsts(v: &Value) -> String {
    v["error_description"]
        .as_str()
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn assertions_are_checked_like_entra() {
    let registered = AppCertificate::generate("mailpipe test app").unwrap();
    let other = AppCertificate::generate("someone else").unwrap();
    let sim = start(&config(&registered)).await;
    let aud = sim.token_url("contoso.example");

    let (status, v) = post(
        &sim,
        &assertion(&registered, &registered, &aud, APP, 300),
        JWT_BEARER,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["access_token"].as_str().unwrap().len() > 20);

    // Another certificate (its own thumbprint): not registered on the app.
    let (status, v) = post(&sim, &assertion(&other, &other, &aud, APP, 300), JWT_BEARER).await;
    assert_eq!(
        (status, v["error"].as_str(), aadsts(&v).as_str()),
        (401, Some("invalid_client"), "AADSTS700027"),
        "{v}"
    );
    // The registered thumbprint, signed by another key: the signature fails.
    let (status, v) = post(
        &sim,
        &assertion(&other, &registered, &aud, APP, 300),
        JWT_BEARER,
    )
    .await;
    assert_eq!((status, aadsts(&v).as_str()), (401, "AADSTS700027"), "{v}");
    // Expired (beyond the 60 s leeway).
    let (status, v) = post(
        &sim,
        &assertion(&registered, &registered, &aud, APP, -120),
        JWT_BEARER,
    )
    .await;
    assert_eq!((status, aadsts(&v).as_str()), (401, "AADSTS700024"), "{v}");
    // Meant for another token endpoint.
    let (status, v) = post(
        &sim,
        &assertion(
            &registered,
            &registered,
            "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token",
            APP,
            300,
        ),
        JWT_BEARER,
    )
    .await;
    assert_eq!((status, aadsts(&v).as_str()), (401, "AADSTS50013"), "{v}");
    // Issued for another client id.
    let (status, v) = post(
        &sim,
        &assertion(
            &registered,
            &registered,
            &aud,
            "44444444-4444-4444-4444-444444444444",
            300,
        ),
        JWT_BEARER,
    )
    .await;
    assert_eq!((status, aadsts(&v).as_str()), (401, "AADSTS700021"), "{v}");
    // Wrong assertion type.
    let (status, _) = post(
        &sim,
        &assertion(&registered, &registered, &aud, APP, 300),
        "urn:other",
    )
    .await;
    assert_eq!(status, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_certificate_that_is_not_pem_is_named_in_the_config_error() {
    let err = mailpipe_sim::SimConfig::from_toml_str(&format!(
        "[[tenants]]\nid = \"contoso\"\n[[apps]]\ntenant = \"contoso\"\nclient_id = \"{APP}\"\nclient_certificate = \"not a certificate\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("apps[0].client_certificate"), "{err}");
}
