//! The Microsoft Graph permissions a pool needs, read from the app's own Graph token: the
//! `roles` claim lists the application permissions an admin consented to in Entra ID.
//! Which feature needs which: `transport = "graph"` creates a draft from the MIME and looks
//! it up in Drafts and Sent Items (`Mail.ReadWrite`) and sends it (`Mail.Send`); reading the
//! Inbox (`[deliver.graph]`: bounces, moving them to folders, settling uncertain sends from
//! Sent Items) needs `Mail.ReadWrite`. RBAC for Applications grants the same permissions
//! inside Exchange instead, where they do not show in the token: a role missing from the
//! claim is a warning (with the command that tells), and the per-mailbox probe is the proof.

use base64::Engine as _;

/// Largest token we decode (Entra's app-only tokens are 1–3 KB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A Graph application permission mailpipe uses, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub role: &'static str,
    /// The feature that needs it, as the user configured it.
    pub feature: &'static str,
}

/// What a mailbox needs from Graph: `graph_transport` (it sends through Graph) and
/// `inbox_reading` (`[deliver.graph]` enabled).
pub fn needs(graph_transport: bool, inbox_reading: bool) -> Vec<Need> {
    let mut v = Vec::new();
    if graph_transport {
        v.push(Need {
            role: "Mail.ReadWrite",
            feature: "transport = \"graph\" (creates the draft from the MIME, finds it in Drafts or Sent Items after a crash)",
        });
        v.push(Need {
            role: "Mail.Send",
            feature: "transport = \"graph\" (sends the draft)",
        });
    }
    if inbox_reading {
        v.push(Need {
            role: "Mail.ReadWrite",
            feature: "[deliver.graph] (reads bounces in the Inbox and moves them to folders, looks uncertain sends up in Sent Items)",
        });
    }
    v
}

/// The `roles` claim of a JWT access token (empty when the claim is absent: an app with no
/// consented application permission). The signature is not checked: it is our own token,
/// just received from the authority over TLS; only what it says about itself is read.
pub fn token_roles(token: &str) -> Result<Vec<String>, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "the Graph token is larger than {MAX_TOKEN_BYTES} bytes"
        ));
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the Graph token is not a JWT (three dot-separated parts)".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the Graph token's claims are not base64url: {e}"))?;
    #[derive(serde::Deserialize)]
    struct Claims {
        #[serde(default)]
        roles: Vec<String>,
    }
    let claims: Claims = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the Graph token's claims are not the expected JSON: {e}"))?;
    Ok(claims.roles)
}

/// The needs `roles` does not cover, each role once (with the first feature needing it).
pub fn missing(needs: &[Need], roles: &[String]) -> Vec<Need> {
    let mut out: Vec<Need> = Vec::new();
    for n in needs {
        let held = roles.iter().any(|r| r.eq_ignore_ascii_case(n.role));
        if !held && !out.iter().any(|o| o.role == n.role) {
            out.push(*n);
        }
    }
    out
}

/// What to do about a role missing from the token, for `mailbox`.
pub fn missing_role_fix(need: &Need, client_id: &str, mailbox: &str) -> String {
    format!(
        "app {client_id}'s Graph token has no {role}, which {feature} needs. Grant it to the pool's mailboxes only with RBAC for Applications (Exchange Online PowerShell): New-ManagementRoleAssignment -App {client_id} -Role \"Application {role}\" -CustomResourceScope \"mailpipe pool\" (after New-ServicePrincipal and New-ManagementScope, docs/microsoft365.md steps 4 and 5); if you did, confirm with Test-ServicePrincipalAuthorization -Identity {client_id} -Resource {mailbox} (RBAC grants do not show in the token). Or tenant-wide: Entra admin center > App registrations > {client_id} > API permissions > Microsoft Graph > Application permissions > {role}, then Grant admin consent",
        role = need.role,
        feature = need.feature,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", b(r#"{"typ":"JWT"}"#), b(claims), b("sig"))
    }

    #[test]
    fn roles_are_read_from_the_claims() {
        let t =
            jwt(r#"{"aud":"https://graph.microsoft.com","roles":["Mail.Send","Mail.ReadWrite"]}"#);
        assert_eq!(token_roles(&t).unwrap(), ["Mail.Send", "Mail.ReadWrite"]);
        assert!(token_roles(&jwt(r#"{"aud":"x"}"#)).unwrap().is_empty());
    }

    #[test]
    fn what_is_not_a_jwt_is_named_and_size_is_bounded() {
        assert!(token_roles("opaque").unwrap_err().contains("not a JWT"));
        assert!(token_roles("a.!!!.c").unwrap_err().contains("base64url"));
        let big = jwt(&format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_TOKEN_BYTES)));
        assert!(token_roles(&big).unwrap_err().contains("larger than"));
    }

    #[test]
    fn each_missing_role_is_named_once_with_its_feature() {
        let need = needs(true, true);
        let m = missing(&need, &["mail.readwrite".to_owned()]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].role, "Mail.Send");
        assert!(m[0].feature.contains("sends the draft"));
        let m = missing(&need, &[]);
        assert_eq!(
            m.iter().map(|n| n.role).collect::<Vec<_>>(),
            ["Mail.ReadWrite", "Mail.Send"]
        );
        assert!(missing(&needs(false, false), &[]).is_empty());
    }
}
