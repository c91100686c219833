//! What to do about a failed mailbox check: Exchange's and Entra's refusals mapped to the
//! admin action that fixes them (docs/microsoft365.md has the full steps).

use crate::auth::oauth::OAuthError;
use crate::pool::SessionError;
use crate::smtp::{SmtpFailure, SmtpStage};

/// What the hint needs to name things.
#[derive(Debug, Clone, Copy)]
pub struct HintContext<'a> {
    pub mailbox: &'a str,
    pub oauth: bool,
    pub client_id: Option<&'a str>,
}

/// The AADSTS number at the start of an Entra error description.
pub fn aadsts_code(description: &str) -> Option<u32> {
    let rest = description.split("AADSTS").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub fn hint(failure: &SessionError, cx: HintContext<'_>) -> String {
    match failure {
        SessionError::Token(e) => token_hint(e, cx),
        SessionError::Smtp(f) => smtp_hint(f, cx),
    }
}

fn token_hint(e: &OAuthError, cx: HintContext<'_>) -> String {
    let app = cx.client_id.unwrap_or("<client id>");
    match e {
        OAuthError::Refused { description, .. } => match aadsts_code(description) {
            Some(7000215 | 7000222 | 7000216) => format!(
                "the client secret is wrong or expired: create a new one (Entra admin center > App registrations > {app} > Certificates & secrets) and update client_secret; give the secret's Value, not its ID"
            ),
            Some(700027) => format!(
                "the certificate is not registered on app {app}, or the key does not match it: upload the .cer under App registrations > {app} > Certificates & secrets"
            ),
            Some(700024) => "the client assertion's time range was refused: check this machine's clock (NTP); a federated token file that is not being rotated has expired".into(),
            Some(700211 | 7002110) => format!(
                "no federated credential on app {app} trusts this token's issuer: under App registrations > {app} > Certificates & secrets > Federated credentials, the issuer must be the cluster's OIDC issuer URL exactly (trailing slash included)"
            ),
            Some(700213 | 7002137 | 7002138) => format!(
                "no federated credential on app {app} matches this token's subject: it must be system:serviceaccount:NAMESPACE:SERVICEACCOUNT of the pod, case-sensitive"
            ),
            Some(700212) => format!(
                "the federated token's audience is not the credential's: project the service-account token with audience api://AzureADTokenExchange, the audience of the federated credential on app {app}"
            ),
            Some(50013 | 700021) => "the assertion does not match the endpoint or app: check tenant_id, authority and client_id".into(),
            Some(700016) => format!(
                "app {app} is not in this directory: check client_id and tenant_id (and that an admin consented to the app in this tenant)"
            ),
            Some(90002) => "tenant not found: check tenant_id (the directory id or a verified domain) and that authority is this tenant's cloud".into(),
            Some(70011) => "the scope is not valid: use scope = \"https://outlook.office365.com/.default\"".into(),
            _ => "the token endpoint refused the app: see the AADSTS code in the reply".into(),
        },
        OAuthError::Unreachable { .. } => {
            "the token authority is unreachable: check DNS, proxy and egress rules to the authority (sovereign clouds use their own)".into()
        }
        OAuthError::Redirected { .. } => {
            "the authority redirects: configure the final https:// authority (redirects are never followed)".into()
        }
        OAuthError::Malformed { .. } => {
            "the authority did not answer like Entra ID: check authority".into()
        }
        OAuthError::Assertion { .. } => {
            "the client assertion could not be signed: check client_certificate_key".into()
        }
        OAuthError::AssertionFile { .. } => {
            "the federated token file is unreadable: check the projected service-account token volume (azure.workload.identity/use: \"true\" on the pod) and client_assertion_file".into()
        }
    }
}

fn smtp_hint(f: &SmtpFailure, cx: HintContext<'_>) -> String {
    let mbx = cx.mailbox;
    let app = cx.client_id.unwrap_or("<client id>");
    match f {
        SmtpFailure::Reply { stage, reply } => {
            match reply.enhanced.as_deref().unwrap_or("") {
                "5.7.139" => format!(
                    "SMTP AUTH is disabled for the tenant or the mailbox: Set-CASMailbox -Identity {mbx} -SmtpClientAuthenticationDisabled $false (tenant-wide: Set-TransportConfig -SmtpClientAuthenticationDisabled $false)"
                ),
                "5.7.30" => "basic authentication is off for this tenant: move the mailbox to OAuth2 (remove auth = \"password\"; docs/microsoft365.md)".into(),
                "5.7.708" => "Microsoft blocks this tenant from sending (often a new or suspected tenant): open a Microsoft 365 support request; no setting here fixes it".into(),
                "5.7.3" | "4.7.3" if cx.oauth => format!(
                    "Exchange does not let app {app} use this mailbox: New-ServicePrincipal -AppId {app} -ObjectId <enterprise application's object id>, then Add-MailboxPermission -Identity {mbx} -User <service principal id> -AccessRights FullAccess; check the SMTP.SendAsApp permission has admin consent"
                ),
                "5.7.3" | "4.7.3" => "the username or password is wrong (or the account needs MFA, which SMTP AUTH cannot do): move the mailbox to OAuth2".into(),
                "5.7.57" => "the server did not take the authentication: check auth for this mailbox".into(),
                "4.2.0" => format!(
                    "mailbox logon failure: the mailbox needs a licence and app {app} needs FullAccess on it (Add-MailboxPermission -Identity {mbx} -User <service principal id> -AccessRights FullAccess)"
                ),
                _ if *stage == SmtpStage::Auth => "AUTH was refused: see Exchange's reply".into(),
                _ => "Exchange refused the session: see its reply".into(),
            }
        }
        SmtpFailure::Protocol { .. } => {
            "the server sent data it should not have (bytes after its STARTTLS reply): something on the path is tampering with the connection; check proxies and the host".into()
        }
        SmtpFailure::Insecure { .. } => {
            "no verified TLS: the host must offer STARTTLS with a valid certificate for its name (smtp.office365.com; extra_ca_file only for a test server)".into()
        }
        SmtpFailure::Timeout { stage } | SmtpFailure::Network { stage, .. }
            if *stage == SmtpStage::Connect =>
        {
            "cannot reach the SMTP host: check host/port and that outbound port 587 is open".into()
        }
        SmtpFailure::Timeout { .. } | SmtpFailure::Network { .. } => {
            "the connection broke: retry; if it repeats, check network and proxies".into()
        }
        SmtpFailure::Fenced => {
            "the send took longer than its time budget before the data: retry".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_codes_are_read_from_descriptions() {
        assert_eq!(
            aadsts_code("AADSTS7000215: Invalid client secret provided."),
            Some(7000215)
        );
        assert_eq!(
            aadsts_code("invalid_client AADSTS90002: Tenant"),
            Some(90002)
        );
        assert_eq!(aadsts_code("no code"), None);
    }

    #[test]
    fn federated_refusals_point_at_the_field_that_does_not_match() {
        let refused = |description: &str| {
            let e = SessionError::Token(OAuthError::Refused {
                endpoint: "e".into(),
                client_id: "app".into(),
                status: 401,
                error: "invalid_client".into(),
                description: description.into(),
            });
            let cx = HintContext {
                mailbox: "m@contoso.example",
                oauth: true,
                client_id: Some("app"),
            };
            hint(&e, cx)
        };
        assert!(refused("AADSTS700211: No matching federated identity record found for presented assertion issuer 'x'.").contains("issuer"));
        assert!(refused("AADSTS700213: No matching federated identity record found for presented assertion subject 'x'.").contains("system:serviceaccount:"));
        assert!(refused("AADSTS700212: No matching federated identity record found for presented assertion audience 'x'.").contains("api://AzureADTokenExchange"));
    }
}
