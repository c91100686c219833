//! Where an app's token requests go: `{authority}/{tenant_id}/oauth2/v2.0/token`, built from
//! a parsed authority (HTTPS, or plain HTTP only to a loopback host on explicit opt-in) and
//! a tenant id that can name a directory. Checked at load so `--check-config` names the key.

use mailpipe_common::config::ConfigError;
use reqwest::Url;

use crate::settings::OAuthApp;

/// A checked token URL. The client secret or assertion is posted here and nowhere else
/// (the HTTP client follows no redirects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEndpoint {
    url: Url,
}

impl TokenEndpoint {
    /// Checks `app.authority` and `app.tenant_id`; `key` is the app's key path
    /// (`deliver.tenants[0].oauth`) for error messages.
    pub fn new(app: &OAuthApp, key: &str) -> Result<Self, ConfigError> {
        let tenant = app.tenant_id.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.tenant_id"),
                "required: the directory (tenant) id, a GUID, or a verified domain such as contoso.onmicrosoft.com",
            )
        })?;
        check_tenant_id(tenant).map_err(|m| ConfigError::invalid(format!("{key}.tenant_id"), m))?;
        let authority = parse_authority(&app.authority, app.allow_loopback_http)
            .map_err(|m| ConfigError::invalid(format!("{key}.authority"), m))?;
        let url = authority
            .join(&format!("{tenant}/oauth2/v2.0/token"))
            .map_err(|e| ConfigError::invalid(format!("{key}.authority"), e.to_string()))?;
        Ok(Self { url })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }
}

impl std::fmt::Display for TokenEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// The authority as a base URL (ending in `/`). Judged on the parsed URL, never on its
/// text: `http://127.0.0.1@evil.example` has the host `evil.example`.
pub(crate) fn parse_authority(text: &str, allow_loopback_http: bool) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not carry user information"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?} must not have a query or fragment"));
    }
    let host = url
        .host()
        .ok_or_else(|| format!("{text:?} has no host"))?
        .to_owned();
    match url.scheme() {
        "https" => {}
        "http" if allow_loopback_http => {
            let loopback = match &host {
                url::Host::Ipv4(ip) => ip.is_loopback(),
                url::Host::Ipv6(ip) => ip.is_loopback(),
                url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
            };
            if !loopback {
                return Err(format!(
                    "{text:?}: plain http is allowed only to a loopback address or localhost, not {host}"
                ));
            }
        }
        "http" => {
            return Err(format!(
                "{text:?} must be https:// (plain http only to a local simulator, with allow_loopback_http = true)"
            ));
        }
        other => return Err(format!("{text:?}: scheme {other} is not https")),
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// A directory id as Entra takes it in the token URL for app-only tokens: a GUID or a
/// domain name. `common`, `organizations` and `consumers` cannot issue app-only tokens.
pub fn check_tenant_id(value: &str) -> Result<(), String> {
    if value.len() == 36 && uuid::Uuid::try_parse(value).is_ok() {
        return Ok(());
    }
    if ["common", "organizations", "consumers"]
        .iter()
        .any(|w| value.eq_ignore_ascii_case(w))
    {
        return Err(format!(
            "{value:?} cannot issue app-only tokens; give the tenant's own id (a GUID) or domain"
        ));
    }
    let labels: Vec<&str> = value.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let domain = value.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_alphabetic()));
    if domain {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is neither a GUID (00000000-0000-0000-0000-000000000000) nor a domain such as contoso.onmicrosoft.com"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn app(authority: &str, tenant: Option<&str>, loopback: bool) -> OAuthApp {
        OAuthApp {
            tenant_id: tenant.map(str::to_owned),
            client_id: "c".into(),
            client_secret: None,
            client_certificate: None,
            client_certificate_key: None,
            client_assertion_file: None,
            client_assertion_file_env: None,
            authority: authority.into(),
            scope: "s".into(),
            allow_loopback_http: loopback,
        }
    }

    fn err(authority: &str, tenant: Option<&str>, loopback: bool) -> String {
        TokenEndpoint::new(&app(authority, tenant, loopback), "k")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn token_url_is_built_from_authority_and_tenant() {
        let ok = |a: &str, t: &str, l: bool| {
            TokenEndpoint::new(&app(a, Some(t), l), "k")
                .unwrap()
                .to_string()
        };
        assert_eq!(
            ok(
                "https://login.microsoftonline.com",
                "contoso.onmicrosoft.com",
                false
            ),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            ok(
                "https://login.microsoftonline.us/",
                "0b5c6d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e",
                false
            ),
            "https://login.microsoftonline.us/0b5c6d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e/oauth2/v2.0/token"
        );
        assert_eq!(
            ok("http://127.0.0.1:8025", "contoso.example", true),
            "http://127.0.0.1:8025/contoso.example/oauth2/v2.0/token"
        );
        assert_eq!(
            ok("http://[::1]:8025", "contoso.example", true),
            "http://[::1]:8025/contoso.example/oauth2/v2.0/token"
        );
        assert_eq!(
            ok("http://LOCALHOST:8025", "contoso.example", true),
            "http://localhost:8025/contoso.example/oauth2/v2.0/token"
        );
    }

    #[test]
    fn plain_http_needs_the_opt_in_and_a_parsed_loopback_host() {
        let t = Some("contoso.example");
        assert!(err("http://127.0.0.1:8025", t, false).contains("k.authority"));
        for tricky in [
            "http://127.0.0.1@evil.example",
            "http://localhost.evil.example",
            "http://localhost@evil.example:8025",
            "http://127.0.0.1.evil.example",
            "http://10.0.0.1",
            "http://evil.example#@127.0.0.1",
        ] {
            let e = err(tricky, t, true);
            assert!(e.starts_with("k.authority:"), "{tricky}: {e}");
        }
        assert!(err("ftp://127.0.0.1", t, true).contains("not https"));
        assert!(err("https://user:pw@login.example", t, false).contains("user information"));
    }

    #[test]
    fn tenant_id_is_required_and_must_name_a_directory() {
        let a = "https://login.microsoftonline.com";
        assert!(err(a, None, false).starts_with("k.tenant_id: required"));
        for bad in [
            "contoso",
            "organizations",
            "common",
            "a/b.com",
            "x..com",
            "-a.com",
            "a.c0m",
            "contoso.onmicrosoft.com/../x",
        ] {
            let e = err(a, Some(bad), false);
            assert!(e.starts_with("k.tenant_id:"), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn accepted_tenant_ids_stay_one_path_segment(s in "[ -~]{0,80}") {
            if check_tenant_id(&s).is_ok() {
                prop_assert!(!s.contains(['/', '?', '#', '%', '@', ' ', '\\']));
                let url = TokenEndpoint::new(&app("https://login.example", Some(&s), false), "k").unwrap();
                prop_assert_eq!(url.url().host_str(), Some("login.example"));
                prop_assert_eq!(url.url().path(), format!("/{s}/oauth2/v2.0/token"));
            }
        }
    }
}
