//! Federated credentials (workload identity): the app proves itself with a token another
//! issuer gave this workload (Kubernetes' projected service-account token, trusted through a
//! federated identity credential on the app registration), sent as the client assertion.
//! No secret to store or rotate: kubelet rewrites the file before the token expires, so it
//! is read anew for every token request, never cached. Read like a secret file (a regular
//! file only, so a FIFO cannot block us; bounded in size and time), and its content is a
//! credential: it never reaches logs or errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use mailpipe_common::config::{ConfigError, SecretRef};

use crate::settings::OAuthApp;

/// Projected service-account tokens are 1-2 KiB; anything above this is not one.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How long one read may take (a file on a hung network mount must not hang the send).
pub const READ_LIMIT: Duration = Duration::from_secs(5);

/// Where the app's federated token lives, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct FederatedTokenFile {
    path: PathBuf,
    /// The config key that gave the path, for errors.
    key: String,
}

impl FederatedTokenFile {
    /// From `client_assertion_file` or `client_assertion_file_env` (exactly one: the caller
    /// checks); `key` is the app's key path. Reads the file once, so a missing or wrong file
    /// is a configuration error naming the key, not a refusal at the first send.
    pub fn from_settings(app: &OAuthApp, key: &str) -> Result<Self, ConfigError> {
        let file = Self::locate(app, key, |var| std::env::var_os(var))?;
        file.read_now()
            .map_err(|message| ConfigError::invalid(&file.key, message))?;
        Ok(file)
    }

    /// The path, from the file key or from the variable `env` names (`lookup` reads the
    /// environment; tests pass their own).
    fn locate(
        app: &OAuthApp,
        key: &str,
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, ConfigError> {
        let (path, key) = match (&app.client_assertion_file, &app.client_assertion_file_env) {
            (Some(path), None) => (path.clone(), format!("{key}.client_assertion_file")),
            (None, Some(var)) => {
                let key = format!("{key}.client_assertion_file_env");
                let path = lookup(var).filter(|p| !p.is_empty()).ok_or_else(|| {
                    ConfigError::invalid(
                        &key,
                        format!(
                            "environment variable {var} is not set (Azure Workload Identity sets it in pods labelled azure.workload.identity/use: \"true\")"
                        ),
                    )
                })?;
                (PathBuf::from(path), key)
            }
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "give client_assertion_file or client_assertion_file_env, not both",
                ));
            }
        };
        if !path.is_absolute() {
            return Err(ConfigError::invalid(
                &key,
                format!("{} is not an absolute path", path.display()),
            ));
        }
        Ok(Self { path, key })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current token, read on a blocking thread within [`READ_LIMIT`]. The error says
    /// what is wrong with the file, never what is in it.
    pub async fn read(&self) -> Result<SecretString, String> {
        let file = self.clone();
        match tokio::time::timeout(
            READ_LIMIT,
            tokio::task::spawn_blocking(move || file.read_now()),
        )
        .await
        {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => Err(format!("reading {} failed: {e}", self.path.display())),
            Err(_) => Err(format!(
                "reading {} took longer than {READ_LIMIT:?}",
                self.path.display()
            )),
        }
    }

    /// Reads and checks the token now (blocking). Reuses the secret-file reader: a regular
    /// file only, bounded, trailing newlines dropped, empty refused.
    fn read_now(&self) -> Result<SecretString, String> {
        let token = SecretRef {
            env: None,
            file: Some(self.path.clone()),
        }
        .resolve(&self.key)
        .map_err(|e| match e {
            ConfigError::Secret { message, .. } => message,
            other => other.to_string(),
        })?;
        let text = token.expose_secret();
        if text.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "{} is larger than {MAX_TOKEN_BYTES} bytes: not a service-account token",
                self.path.display()
            ));
        }
        if !looks_like_jwt(text.trim()) {
            return Err(format!(
                "{} does not hold a JWT (three base64url parts separated by dots)",
                self.path.display()
            ));
        }
        Ok(SecretString::from(text.trim().to_owned()))
    }
}

/// Three non-empty base64url segments: the shape of a signed token, checked without
/// decoding it (the issuer's signature is Entra's to check).
fn looks_like_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn app(file: Option<&Path>, env: Option<&str>) -> OAuthApp {
        OAuthApp {
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            client_id: "c".into(),
            client_secret: None,
            client_certificate: None,
            client_certificate_key: None,
            client_assertion_file: file.map(Path::to_path_buf),
            client_assertion_file_env: env.map(str::to_owned),
            authority: "https://login.microsoftonline.com".into(),
            scope: "s".into(),
            allow_loopback_http: false,
        }
    }

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    #[test]
    fn a_token_file_is_read_and_its_content_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let f = FederatedTokenFile::from_settings(&app(Some(&path), None), "k").unwrap();
        assert_eq!(f.read_now().unwrap().expose_secret(), TOKEN);

        std::fs::write(&path, "not-a-jwt secret-canary").unwrap();
        let e = FederatedTokenFile::from_settings(&app(Some(&path), None), "k")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("k.client_assertion_file:") && e.contains("does not hold a JWT"),
            "{e}"
        );
        assert!(!e.contains("secret-canary"), "{e}");

        std::fs::write(&path, format!("{}.a.b", "a".repeat(MAX_TOKEN_BYTES))).unwrap();
        let e = FederatedTokenFile::from_settings(&app(Some(&path), None), "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 16384 bytes"), "{e}");

        let e =
            FederatedTokenFile::from_settings(&app(Some(&dir.path().join("absent")), None), "k")
                .unwrap_err()
                .to_string();
        assert!(
            e.starts_with("k.client_assertion_file:") && e.contains("absent"),
            "{e}"
        );
        let e = FederatedTokenFile::from_settings(&app(Some(Path::new("token")), None), "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an absolute path"), "{e}");
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for path in [fifo.as_path(), dir.path()] {
            let e = FederatedTokenFile::from_settings(&app(Some(path), None), "k")
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{}: {e}", path.display());
        }
    }

    #[test]
    fn the_path_can_come_from_an_environment_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("azure-identity-token");
        std::fs::write(&path, TOKEN).unwrap();
        let var = "AZURE_FEDERATED_TOKEN_FILE";
        let env = |name: &str| (name == var).then(|| path.clone().into_os_string());
        let f = FederatedTokenFile::locate(&app(None, Some(var)), "k", env).unwrap();
        assert_eq!(f.path(), path);
        assert_eq!(f.key, "k.client_assertion_file_env");
        let e = FederatedTokenFile::from_settings(
            &app(None, Some("MAILPIPE_TEST_SURELY_UNSET_VAR")),
            "k",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("k.client_assertion_file_env:")
                && e.contains("MAILPIPE_TEST_SURELY_UNSET_VAR is not set"),
            "{e}"
        );
        let e = FederatedTokenFile::from_settings(&app(Some(&path), Some(var)), "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
    }
}
