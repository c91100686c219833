//! SASL: decoding of XOAUTH2, PLAIN and LOGIN responses, and the credential checks Exchange
//! makes (token issued for an app granted the mailbox; password with basic auth allowed).

use base64::Engine as _;

use crate::directory::{Directory, Mailbox};
use crate::smtp::replies::{self, Reply};
use crate::tokens::{Audience, TokenStore};

/// Decodes a base64 SASL response; `=` is the empty response.
pub(crate) fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// `user=<mailbox>\x01auth=Bearer <token>\x01\x01` -> (mailbox, token).
pub(crate) fn parse_xoauth2(raw: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut user = None;
    let mut token = None;
    for part in text.split('\x01') {
        if let Some(u) = part.strip_prefix("user=") {
            user = Some(u.to_owned());
        } else if let Some(a) = part.strip_prefix("auth=") {
            let (scheme, t) = a.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            token = Some(t.trim().to_owned());
        }
    }
    Some((user?, token?))
}

/// `authzid\0authcid\0password` -> (authcid, password). A differing authzid is refused
/// later, because Exchange has no proxy authorization over SMTP.
pub(crate) fn parse_plain(raw: &[u8]) -> Option<(String, String, String)> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut it = text.split('\0');
    let (authz, authc, pass) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some((authz.to_owned(), authc.to_owned(), pass.to_owned()))
}

/// Outcome of checking credentials: the mailbox, or the reply to send. The mailbox name is
/// returned alongside failures when known, for the refusal record.
pub(crate) type AuthResult = Result<Mailbox, (Option<String>, Reply)>;

pub(crate) fn check_xoauth2(
    dir: &Directory,
    tokens: &TokenStore,
    host: &str,
    user: &str,
    token: &str,
) -> AuthResult {
    let fail = || (Some(user.to_ascii_lowercase()), replies::auth_failed(host));
    let mailbox = dir.mailbox(user).ok_or_else(fail)?;
    let issued = tokens.validate(token).map_err(|_| fail())?;
    if issued.audience != Audience::Exchange {
        // A Graph token is for another resource: Exchange refuses it like a bad token.
        return Err(fail());
    }
    let app = dir.apps.get(&issued.client_id).ok_or_else(fail)?;
    if !issued.tenant.eq_ignore_ascii_case(&mailbox.tenant) || !dir.app_may_use(app, mailbox) {
        return Err(fail());
    }
    if !mailbox.smtp_auth_enabled {
        // Exchange applies the per-mailbox SMTP AUTH switch to OAuth too.
        return Err((
            Some(mailbox.address.clone()),
            replies::basic_auth_disabled_mailbox(host),
        ));
    }
    Ok(mailbox.clone())
}

pub(crate) fn check_password(
    dir: &Directory,
    host: &str,
    user: &str,
    password: &str,
) -> AuthResult {
    let fail = || (Some(user.to_ascii_lowercase()), replies::auth_failed(host));
    let mailbox = dir.mailbox(user).ok_or_else(fail)?;
    let tenant_allows = dir
        .tenant(&mailbox.tenant)
        .is_some_and(|t| t.basic_auth_enabled);
    if !tenant_allows {
        // The tenant switch wins over the password: Exchange answers 5.7.139 either way.
        return Err((
            Some(mailbox.address.clone()),
            replies::basic_auth_disabled_tenant(host),
        ));
    }
    if !mailbox.smtp_auth_enabled {
        return Err((
            Some(mailbox.address.clone()),
            replies::basic_auth_disabled_mailbox(host),
        ));
    }
    match &mailbox.password {
        Some(p) if constant_time_eq(p.as_bytes(), password.as_bytes()) => Ok(mailbox.clone()),
        _ => Err(fail()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_string() {
        let raw = b"user=a@contoso.example\x01auth=Bearer tok123\x01\x01";
        assert_eq!(
            parse_xoauth2(raw),
            Some(("a@contoso.example".into(), "tok123".into()))
        );
        assert_eq!(parse_xoauth2(b"user=a\x01auth=Basic x\x01\x01"), None);
        assert_eq!(parse_xoauth2(b"garbage"), None);
    }

    #[test]
    fn plain_string() {
        assert_eq!(
            parse_plain(b"\0a@x\0pw"),
            Some(("".into(), "a@x".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"a@x\0pw"), None);
    }
}
