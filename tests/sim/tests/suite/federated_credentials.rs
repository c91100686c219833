//! Federated identity credentials at the simulated token endpoint: a token of a trusted
//! issuer (here a Kubernetes service-account token) gets the app an access token, and the
//! simulator remembers which one it saw; a wrong issuer, subject or audience, an expired
//! token and a token signed by another key are refused with Entra's codes, the audience
//! refusal naming the audience presented.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{SCOPE, start};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mailpipe_sim::{AppCertificate, RunningSim};
use serde_json::{Value, json};

const APP: &str = "55555555-5555-5555-5555-555555555555";
const ISSUER: &str = "https://oidc.cluster.example/7f3e";
const SUBJECT: &str = "system:serviceaccount:mailpipe:mailpipe-deliver";
const AUDIENCE: &str = "api://AzureADTokenExchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn config(issuer_key: &AppCertificate) -> String {
    format!(
        "[[tenants]]\nid = \"contoso\"\ndomains = [\"contoso.example\"]\n[[apps]]\ntenant = \"contoso\"\nclient_id = \"{APP}\"\nmailboxes = [\"*\"]\n[[apps.federated]]\nissuer = \"{ISSUER}\"\nsubject = \"{SUBJECT}\"\nissuer_key = '''\n{}'''\n",
        issuer_key.certificate_pem
    )
}

/// A service-account token as kubelet projects it, every claim adjustable.
fn k8s_token(signer: &AppCertificate, iss: &str, sub: &str, aud: &str, exp_in: i64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({
        "aud": [aud], "iss": iss, "sub": sub, "jti": uuid::Uuid::new_v4().to_string(),
        "iat": t - 600, "nbf": t - 600, "exp": t + exp_in,
    });
    let key = EncodingKey::from_rsa_pem(signer.private_key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

async fn post(sim: &RunningSim, assertion: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(sim.token_url("contoso.example"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", SCOPE),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn aadsts(v: &Value) -> String {
    let d = v["error_description"].as_str().unwrap_or_default();
    d.split(':').next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn federated_assertions_are_checked_like_entra() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let issuer = AppCertificate::generate("cluster issuer").unwrap();
        let other = AppCertificate::generate("another issuer").unwrap();
        let sim = start(&config(&issuer)).await;

        let good = k8s_token(&issuer, ISSUER, SUBJECT, AUDIENCE, 3600);
        let (status, v) = post(&sim, &good).await;
        assert_eq!(status, 200, "{v}");
        assert!(v["access_token"].as_str().unwrap().len() > 20);
        let seen = sim.federated_assertions();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].client_id.as_str(), seen[0].subject.as_str()),
            (APP, SUBJECT)
        );
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                good.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(seen[0].jti.as_deref(), claims["jti"].as_str());

        let refused = |status: u16, v: &Value| {
            assert_eq!(status, 401, "{v}");
            assert_eq!(v["error"], "invalid_client", "{v}");
            aadsts(v)
        };
        let (s, v) = post(
            &sim,
            &k8s_token(
                &issuer,
                "https://oidc.other.example",
                SUBJECT,
                AUDIENCE,
                3600,
            ),
        )
        .await;
        assert_eq!(refused(s, &v), "AADSTS700211");
        let (s, v) = post(
            &sim,
            &k8s_token(
                &issuer,
                ISSUER,
                "system:serviceaccount:default:default",
                AUDIENCE,
                3600,
            ),
        )
        .await;
        assert_eq!(refused(s, &v), "AADSTS700213");
        let (s, v) = post(
            &sim,
            &k8s_token(
                &issuer,
                ISSUER,
                SUBJECT,
                "https://kubernetes.default.svc",
                3600,
            ),
        )
        .await;
        assert_eq!(refused(s, &v), "AADSTS700212");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains("audience 'https://kubernetes.default.svc'"),
            "{v}"
        );
        // Expired beyond the leeway.
        let (s, v) = post(&sim, &k8s_token(&issuer, ISSUER, SUBJECT, AUDIENCE, -600)).await;
        assert_eq!(refused(s, &v), "AADSTS700024");
        // The right claims, signed by a key the issuer does not have.
        let (s, v) = post(&sim, &k8s_token(&other, ISSUER, SUBJECT, AUDIENCE, 3600)).await;
        assert_eq!(refused(s, &v), "AADSTS700027");
        // Only the accepted assertion was recorded.
        assert_eq!(sim.federated_assertions().len(), 1);
        sim.shutdown().await;
    })
    .await
    .expect("the test finishes within 120 s");
}

#[test]
fn a_federated_credential_names_its_bad_keys() {
    let base = format!(
        "[[tenants]]\nid = \"contoso\"\n[[apps]]\ntenant = \"contoso\"\nclient_id = \"{APP}\"\n[[apps.federated]]\nissuer = \"{ISSUER}\"\n"
    );
    let err = mailpipe_sim::SimConfig::from_toml_str(&format!(
        "{base}subject = \"{SUBJECT}\"\nissuer_key = \"not a key\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("apps[0].federated[0].issuer_key"), "{err}");
    let err = mailpipe_sim::SimConfig::from_toml_str(&format!(
        "{base}subject = \" \"\nissuer_key = \"not a key\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("apps[0].federated[0].subject"), "{err}");
}
