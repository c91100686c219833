//! Federated credentials end to end, deliver's real token client against the simulator's
//! token endpoint over loopback: a service-account token read from a file gets a token that
//! authenticates a mailbox; the file rotated (kubelet writes a new token) is what the next
//! token request sends, without a restart; a token for the wrong audience is refused with
//! an error naming that audience; a FIFO in place of the file is refused, never blocked on;
//! `client_assertion_file_env` takes the path from the environment (`--check-config`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mailpipe_common::config::ConfigSource;
use mailpipe_common::testkit::within;
use mailpipe_deliver::auth::oauth::{ClientCredential, OAuthError, TokenSource, token_http_client};
use mailpipe_deliver::auth::token_endpoint::TokenEndpoint;
use mailpipe_deliver::pool::MailboxPool;
use mailpipe_deliver::settings::DeliverSettings;
use mailpipe_sim::{AppCertificate, RunningSim, SimConfig, Simulator};
use serde_json::json;

const APP: &str = "66666666-6666-6666-6666-666666666666";
const ISSUER: &str = "https://oidc.cluster.example/5d1c";
const SUBJECT: &str = "system:serviceaccount:mailpipe:mailpipe-deliver";
const AUDIENCE: &str = "api://AzureADTokenExchange";
const LIMIT: Duration = Duration::from_secs(120);

/// A projected service-account token as kubelet writes it.
fn k8s_token(issuer_key: &AppCertificate, aud: &str) -> (String, String) {
    let jti = uuid::Uuid::new_v4().to_string();
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "aud": [aud], "iss": ISSUER, "sub": SUBJECT, "jti": jti,
        "iat": t, "nbf": t, "exp": t + 3600,
        "kubernetes.io": { "namespace": "mailpipe", "serviceaccount": { "name": "mailpipe-deliver" } },
    });
    let key = EncodingKey::from_rsa_pem(issuer_key.private_key_pem.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
    (token, jti)
}

async fn sim_trusting(issuer_key: &AppCertificate) -> RunningSim {
    let toml = format!(
        "[[tenants]]\nid = \"contoso\"\ndomains = [\"contoso.example\", \"contoso.onmicrosoft.com\"]\n[[apps]]\ntenant = \"contoso\"\nclient_id = \"{APP}\"\nmailboxes = [\"*\"]\n[[apps.federated]]\nissuer = \"{ISSUER}\"\nsubject = \"{SUBJECT}\"\nissuer_key = '''\n{}'''\n[[mailboxes]]\naddress = \"sender1@contoso.example\"\ntenant = \"contoso\"\n",
        issuer_key.certificate_pem
    );
    Simulator::start(SimConfig::from_toml_str(&toml).unwrap())
        .await
        .unwrap()
}

fn settings_toml(authority: &str, credential: &str, smtp_port: u16, ca: &Path) -> String {
    format!(
        r#"
[deliver]
extra_ca_file = {ca:?}
[[deliver.tenants]]
id = "contoso"
[deliver.tenants.oauth]
tenant_id = "contoso.onmicrosoft.com"
client_id = "{APP}"
{credential}
authority = "{authority}"
allow_loopback_http = true
[[deliver.mailboxes]]
address = "sender1@contoso.example"
tenant = "contoso"
host = "localhost"
port = {smtp_port}
"#,
        ca = ca.display().to_string()
    )
}

fn load(sim: &RunningSim, token_file: &Path) -> Result<DeliverSettings, String> {
    let toml = settings_toml(
        &sim.authority(),
        &format!(
            "client_assertion_file = {:?}",
            token_file.display().to_string()
        ),
        sim.smtp_addr().port(),
        sim.ca_pem_path(),
    );
    DeliverSettings::load(&ConfigSource::from_toml(&toml)).map_err(|e| e.to_string())
}

/// deliver's token client for the settings' first app.
fn token_source(settings: &DeliverSettings) -> TokenSource {
    let app = settings.tenants[0].oauth.as_ref().unwrap();
    let key = "deliver.tenants[0].oauth";
    TokenSource::new(
        app,
        TokenEndpoint::new(app, key).unwrap(),
        ClientCredential::from_settings(app, key).unwrap(),
        token_http_client(None).unwrap(),
    )
}

/// Writes a token file the way kubelet does: a new file renamed over the old one.
fn rotate(path: &Path, token: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, token).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
async fn a_federated_token_file_authenticates_and_its_rotation_is_picked_up() {
    within(LIMIT, "federated token rotation", async {
        let issuer = AppCertificate::generate("cluster issuer").unwrap();
        let sim = sim_trusting(&issuer).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("azure-identity-token");
        let (first, first_jti) = k8s_token(&issuer, AUDIENCE);
        rotate(&file, &first);

        let settings = load(&sim, &file).unwrap();
        // The whole path: token from the federated assertion, then XOAUTH2 with it.
        let pool = MailboxPool::build(&settings).unwrap();
        assert_eq!(pool.mailboxes()[0].auth_label(), "oauth2 (federated)");
        let (session, _) = pool.session(0).await.expect("federated token accepted");
        session.quit().await;
        let seen = sim.federated_assertions();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].subject, SUBJECT);
        assert_eq!(seen[0].jti.as_deref(), Some(first_jti.as_str()));

        // One running token client across a rotation.
        let source = token_source(&settings);
        assert_eq!(source.credential_kind(), "federated");
        let token = source.token().await.unwrap();
        let (second, second_jti) = k8s_token(&issuer, AUDIENCE);
        rotate(&file, &second);
        // The next token request (after a refusal forgot the cached token) reads the file anew.
        source.invalidate(&token).await;
        source.token().await.unwrap();
        let jtis: Vec<_> = sim
            .federated_assertions()
            .into_iter()
            .filter_map(|a| a.jti)
            .collect();
        assert_eq!(jtis, [first_jti.clone(), first_jti, second_jti]);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_naming_it() {
    within(LIMIT, "wrong audience", async {
        let issuer = AppCertificate::generate("cluster issuer").unwrap();
        let sim = sim_trusting(&issuer).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        // The default service-account token (meant for the API server), not the projected one.
        let (token, _) = k8s_token(&issuer, "https://kubernetes.default.svc");
        rotate(&file, &token);
        let settings = load(&sim, &file).unwrap();
        let err = token_source(&settings).token().await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, OAuthError::Refused { status: 401, .. }),
            "{text}"
        );
        assert!(
            text.contains("AADSTS700212") && text.contains("'https://kubernetes.default.svc'"),
            "{text}"
        );
        assert!(!text.contains(&token), "the token leaked: {text}");
        assert!(sim.federated_assertions().is_empty());
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_fifo_in_place_of_the_token_file_is_refused_not_blocked_on() {
    within(LIMIT, "fifo token file", async {
        let issuer = AppCertificate::generate("cluster issuer").unwrap();
        let sim = sim_trusting(&issuer).await;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        // At start: a configuration error naming the key.
        let err = load(&sim, &fifo).unwrap_err();
        assert!(
            err.contains("deliver.tenants[0].oauth.client_assertion_file")
                && err.contains("not a regular file"),
            "{err}"
        );
        // While running: the file replaced by a FIFO fails that token request.
        let file = dir.path().join("token");
        rotate(&file, &k8s_token(&issuer, AUDIENCE).0);
        let source = token_source(&load(&sim, &file).unwrap());
        let token = source.token().await.unwrap();
        std::fs::rename(&fifo, &file).unwrap();
        source.invalidate(&token).await;
        let err = source.token().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, OAuthError::AssertionFile { .. }), "{text}");
        assert!(text.contains("not a regular file"), "{text}");
        sim.shutdown().await;
    })
    .await;
}

#[test]
fn the_token_file_path_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n").unwrap();
    let config = dir.path().join("mailpipe.toml");
    std::fs::write(
        &config,
        settings_toml(
            "https://login.microsoftonline.com",
            r#"client_assertion_file_env = "AZURE_FEDERATED_TOKEN_FILE""#,
            587,
            &token_file,
        )
        .replace("extra_ca_file", "# extra_ca_file"),
    )
    .unwrap();
    let check = |env: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailpipe-deliver"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--check-config")
            .env_remove("AZURE_FEDERATED_TOKEN_FILE");
        if let Some(path) = env {
            cmd.env("AZURE_FEDERATED_TOKEN_FILE", path);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(Some(&token_file));
    assert_eq!(code, 0, "{err}");
    let (code, err) = check(None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("deliver.tenants[0].oauth.client_assertion_file_env")
            && err.contains("AZURE_FEDERATED_TOKEN_FILE is not set"),
        "{err}"
    );
}
