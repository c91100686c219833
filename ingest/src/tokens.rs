//! `ingest.api_tokens`: where each API token lives, its role and owner label, and the
//! check of a presented token (constant time, over every token every time).
//!
//! ```toml
//! api_tokens = [
//!   { file = "/run/secrets/erp-token", role = "submit", owner = "erp" },
//!   { env = "MAILPIPE_DASHBOARD_TOKEN", role = "read" },
//!   { env = "MAILPIPE_INGEST_TOKEN", role = "operate" },
//! ]
//! ```
//!
//! An entry without `role` (written before roles existed) is `operate`, so nothing that
//! worked stops working; `serve` and `--check-config` warn about it, naming the entry's
//! file or variable (never the token).

use std::path::PathBuf;

use mailpipe_common::config::{ConfigError, Problem, SecretRef};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::api::roles::{Caller, Role};

/// One entry of `ingest.api_tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The file holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// `submit`, `read` or `operate`; absent: `operate`, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Recorded on the batches the token creates; a `submit` token sees only those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl From<SecretRef> for TokenEntry {
    fn from(r: SecretRef) -> Self {
        Self {
            env: r.env,
            file: r.file,
            role: None,
            owner: None,
        }
    }
}

impl TokenEntry {
    pub fn with_role(mut self, role: Role, owner: Option<&str>) -> Self {
        self.role = Some(role);
        self.owner = owner.map(str::to_owned);
        self
    }

    fn secret(&self) -> SecretRef {
        SecretRef {
            env: self.env.clone(),
            file: self.file.clone(),
        }
    }

    /// Where the token lives, for messages: the variable or the file, never the token.
    fn source(&self) -> String {
        match (&self.env, &self.file) {
            (Some(var), _) => format!("environment variable {var}"),
            (None, Some(path)) => format!("file {}", path.display()),
            (None, None) => "no source".into(),
        }
    }
}

/// Owner labels: what a person can read in a log line and type in a config.
fn check_owner(owner: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&owner.len())
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{owner:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// What serde cannot check in `ingest.api_tokens`, each naming its key.
pub fn problems(entries: &[TokenEntry]) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let key = |k: &str| format!("ingest.api_tokens[{i}].{k}");
        match &e.owner {
            Some(owner) => {
                if let Err(why) = check_owner(owner) {
                    out.push(Problem::new(key("owner"), why));
                }
            }
            None if e.role == Some(Role::Submit) => out.push(Problem::new(
                key("owner"),
                "a `submit` token needs an owner label (owner = \"erp\"): it sees and controls only the batches created with it",
            )),
            None => {}
        }
    }
    out
}

/// One warning per entry without a role (it is `operate`): (key, message).
pub fn legacy_warnings(entries: &[TokenEntry]) -> Vec<(String, String)> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.role.is_none())
        .map(|(i, e)| {
            (
                format!("ingest.api_tokens[{i}]"),
                format!(
                    "the token in {} has no role, so it is `operate` (may do everything); give it role = \"submit\", \"read\" or \"operate\" (SECURITY.md)",
                    e.source()
                ),
            )
        })
        .collect()
}

/// The resolved API tokens, each with its caller.
#[derive(Clone)]
pub struct ApiTokens(Vec<(SecretString, Caller)>);

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} configured)", self.0.len())
    }
}

impl ApiTokens {
    /// Reads every token now; the error names the entry (`ingest.api_tokens[1]`).
    pub fn resolve(entries: &[TokenEntry]) -> Result<Self, ConfigError> {
        if entries.is_empty() {
            return Err(ConfigError::invalid(
                "ingest.api_tokens",
                "at least one token is required to serve the API (e.g. api_tokens = [{ env = \"MAILPIPE_INGEST_TOKEN\", role = \"operate\" }])",
            ));
        }
        if let Some(p) = problems(entries).into_iter().next() {
            return Err(ConfigError::invalid(
                p.key.unwrap_or_else(|| "ingest.api_tokens".into()),
                p.message,
            ));
        }
        let tokens = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let token = e.secret().resolve(&format!("ingest.api_tokens[{i}]"))?;
                let caller = Caller {
                    role: e.role.unwrap_or(Role::Operate),
                    owner: e.owner.clone(),
                };
                Ok((token, caller))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Self(tokens))
    }

    /// Tokens given in the clear (tests, benches), each with its caller.
    pub fn from_plain(tokens: impl IntoIterator<Item = (String, Caller)>) -> Self {
        Self(
            tokens
                .into_iter()
                .map(|(t, c)| (SecretString::from(t), c))
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the tokens (whatever its role).
    pub fn accepts(&self, presented: &str) -> bool {
        self.identify(presented).is_some()
    }

    /// The caller a presented token stands for. Every token is compared, in constant
    /// time, and the match is selected without a branch, so neither a token's content
    /// nor which one matched leaks through timing.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let mut found = u32::MAX;
        for (i, (t, _)) in self.0.iter().enumerate() {
            let equal = t.expose_secret().as_bytes().ct_eq(presented.as_bytes());
            found.conditional_assign(&(i as u32), equal);
        }
        self.0.get(found as usize).map(|(_, c)| c.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caller(role: Role, owner: Option<&str>) -> Caller {
        Caller {
            role,
            owner: owner.map(str::to_owned),
        }
    }

    #[test]
    fn each_token_stands_for_its_caller_and_nothing_else_is_accepted() {
        let t = ApiTokens::from_plain([
            ("erp-token".to_owned(), caller(Role::Submit, Some("erp"))),
            ("ops-token".to_owned(), caller(Role::Operate, None)),
        ]);
        assert_eq!(
            t.identify("erp-token"),
            Some(caller(Role::Submit, Some("erp")))
        );
        assert_eq!(t.identify("ops-token"), Some(caller(Role::Operate, None)));
        for wrong in ["ops-toke", "", "ops-token2", "erp-token "] {
            assert_eq!(t.identify(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn an_entry_without_a_role_is_operate_with_a_warning_naming_its_file_not_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legacy-token");
        std::fs::write(&path, "the-legacy-token\n").unwrap();
        let reader = dir.path().join("reader-token");
        std::fs::write(&reader, "the-reader-token").unwrap();
        let entries = vec![
            TokenEntry::from(SecretRef {
                env: None,
                file: Some(path.clone()),
            }),
            TokenEntry::from(SecretRef {
                env: None,
                file: Some(reader.clone()),
            })
            .with_role(Role::Read, None),
        ];
        let t = ApiTokens::resolve(&entries).unwrap();
        assert_eq!(t.identify("the-legacy-token").unwrap().role, Role::Operate);
        let warnings = legacy_warnings(&entries);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let (key, message) = &warnings[0];
        assert_eq!(key, "ingest.api_tokens[0]");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!message.contains("the-legacy-token"), "{message}");
    }

    #[test]
    fn a_submit_token_needs_a_readable_owner_label() {
        let base = TokenEntry::from(SecretRef::env("T"));
        let keys = |e: TokenEntry| -> Vec<String> {
            problems(&[e]).into_iter().filter_map(|p| p.key).collect()
        };
        assert_eq!(
            keys(base.clone().with_role(Role::Submit, None)),
            ["ingest.api_tokens[0].owner"]
        );
        assert_eq!(
            keys(base.clone().with_role(Role::Submit, Some("a b"))),
            ["ingest.api_tokens[0].owner"]
        );
        assert!(keys(base.clone().with_role(Role::Submit, Some("erp"))).is_empty());
        assert!(keys(base.with_role(Role::Read, None)).is_empty());
    }

    #[test]
    fn entries_read_from_the_configuration() {
        use mailpipe_common::config::ConfigSource;
        let load = |toml: &str| crate::Config::load(&ConfigSource::from_toml(toml));
        let c = load(
            "[ingest]\napi_tokens = [{ file = \"/x\" }, { env = \"A\", role = \"submit\", owner = \"erp\" }]\n",
        )
        .unwrap();
        let e = &c.ingest.api_tokens;
        assert_eq!(e[0].role, None);
        assert_eq!(e[1].role, Some(Role::Submit));
        assert_eq!(e[1].owner.as_deref(), Some("erp"));
        let err = load("[ingest]\napi_tokens = [{ env = \"A\", role = \"admin\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin"), "{err}");
        let err = load("[ingest]\napi_tokens = [{ env = \"A\", role = \"submit\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.api_tokens[0].owner"), "{err}");
    }
}
