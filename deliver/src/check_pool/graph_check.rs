//! check-pool's Graph part, for `transport = "graph"` mailboxes and `[deliver.graph]`: the
//! permissions in the app's Graph token (`graph_permissions`), then one cheap request on
//! the mailbox itself (a one-message Inbox listing) that proves the app may act on THAT
//! mailbox: an app scoped elsewhere by RBAC for Applications or an application access
//! policy, or a mailbox without Exchange Online, is named here with its fix.

use std::collections::HashMap;
use std::sync::Arc;

use mailpipe_common::config::ConfigError;
use secrecy::ExposeSecret as _;

use super::graph_permissions::{Need, missing, missing_role_fix, needs, token_roles};
use super::hint::{HintContext, hint};
use super::report::MailboxCheck;
use crate::auth::oauth::{ClientCredential, TokenSource};
use crate::auth::token_endpoint::TokenEndpoint;
use crate::graph::{FolderId, GraphClient, GraphError, Order};
use crate::pool::{PoolMailbox, SessionError};
use crate::settings::{DeliverSettings, OAuthApp, Transport};

/// The Graph client and, per tenant id, its app's Graph token source and client id.
#[derive(Debug)]
pub struct GraphCheck {
    client: GraphClient,
    tokens: HashMap<String, (Arc<TokenSource>, String)>,
}

impl GraphCheck {
    /// `None` when `[deliver.graph]` is not enabled (then no mailbox is reached through
    /// Graph: settings refuse `transport = "graph"` without it).
    pub fn from_settings(settings: &DeliverSettings) -> Result<Option<Self>, ConfigError> {
        if !settings.graph.enabled {
            return Ok(None);
        }
        let client = GraphClient::from_settings(settings)?;
        let extra_ca = match &settings.extra_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError::invalid("deliver.extra_ca_file", format!("{}: {e}", path.display()))
            })?),
            None => None,
        };
        let http = crate::auth::oauth::token_http_client(extra_ca.as_deref()).map_err(|e| {
            ConfigError::invalid("deliver.extra_ca_file", e.without_url().to_string())
        })?;
        let mut tokens = HashMap::new();
        for (i, t) in settings.tenants.iter().enumerate() {
            let Some(app) = &t.oauth else { continue };
            let key = format!("deliver.tenants[{i}].oauth");
            let graph_app = OAuthApp {
                scope: settings.graph.scope.clone(),
                ..app.clone()
            };
            let source = TokenSource::new(
                &graph_app,
                TokenEndpoint::new(&graph_app, &key)?,
                ClientCredential::from_settings(&graph_app, &key)?,
                http.clone(),
            );
            tokens.insert(t.id.clone(), (Arc::new(source), app.client_id.clone()));
        }
        Ok(Some(Self { client, tokens }))
    }

    /// Checks `m` through Graph and records the outcome in `check` (a failure only when
    /// the SMTP part passed, so the first problem is the one shown).
    pub async fn check(&self, m: &PoolMailbox, check: &mut MailboxCheck) {
        let mailbox = &m.address;
        if let Err(e) = self.client.check_mailbox(mailbox) {
            check.graph = Some(format!("not read: {e}"));
            return;
        }
        let Some((source, client_id)) = self.tokens.get(&m.tenant_id) else {
            return;
        };
        let token = match source.token().await {
            Ok(t) => t,
            Err(e) => {
                check.graph = Some(format!("FAILED: Graph token: {e}"));
                let fix = hint(
                    &SessionError::Token(e),
                    HintContext {
                        mailbox: mailbox.as_str(),
                        oauth: true,
                        client_id: Some(client_id),
                    },
                );
                fail(check, "graph", fix);
                return;
            }
        };
        let wanted = needs(m.transport == Transport::Graph, true);
        let (lacking, no_roles) = match token_roles(token.expose_secret()) {
            Ok(roles) => (missing(&wanted, &roles), roles.is_empty()),
            Err(why) => {
                check.warnings.push(format!(
                    "the Graph token's permissions could not be read ({why}); the Inbox probe below decides"
                ));
                (Vec::new(), false)
            }
        };
        drop(token);
        match self
            .client
            .list_messages(mailbox, &FolderId::inbox(), Order::OldestFirst, 1)
            .await
        {
            Ok(_) => {
                let (graph, warnings) =
                    after_inbox_read(no_roles, &lacking, client_id, mailbox.as_str());
                check.graph = Some(graph);
                check.warnings.extend(warnings);
            }
            Err(e) => {
                check.graph = Some(format!("FAILED: {e}"));
                fail(
                    check,
                    "graph",
                    graph_hint(&e, mailbox.as_str(), client_id, &lacking),
                );
            }
        }
    }
}

/// What a readable Inbox means for the roles the token lacks: the `graph` column and the
/// warnings. A token with no Graph role at all that still reads the mailbox gets its access
/// from RBAC for Applications (the recommended setup, invisible in the token): said in the
/// column, with the command that lists the grants, not warned on every run. A token holding
/// some roles but not all is an Entra consent with a role forgotten: each one warned.
fn after_inbox_read(
    no_roles: bool,
    lacking: &[Need],
    client_id: &str,
    mailbox: &str,
) -> (String, Vec<String>) {
    if lacking.is_empty() {
        return ("ok (Inbox readable)".into(), Vec::new());
    }
    if no_roles {
        let roles: Vec<&str> = lacking.iter().map(|n| n.role).collect();
        return (
            format!(
                "ok (Inbox readable; the token carries no Graph roles, so RBAC for Applications grants them: Test-ServicePrincipalAuthorization -Identity {client_id} -Resource {mailbox} must list {} in scope)",
                roles
                    .iter()
                    .map(|r| format!("Application {r}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            Vec::new(),
        );
    }
    let warnings = lacking
        .iter()
        .map(|n| missing_role_fix(n, client_id, mailbox))
        .collect();
    ("ok (Inbox readable)".into(), warnings)
}

fn fail(check: &mut MailboxCheck, stage: &str, fix: String) {
    if check.ok {
        check.ok = false;
        check.stage = stage.into();
        check.hint = Some(fix);
    }
}

/// What to do about Graph refusing the probe on `mailbox`; `lacking`: the roles the token
/// does not hold.
pub fn graph_hint(e: &GraphError, mailbox: &str, client_id: &str, lacking: &[Need]) -> String {
    let (status, code, message) = match e {
        GraphError::Api {
            status,
            code,
            message,
            ..
        } => (*status, code.as_str(), message.as_str()),
        _ => {
            return "Graph could not be reached or answered with an error: check deliver.graph.base_url and the network".into();
        }
    };
    match (status, code) {
        (403, _) if !lacking.is_empty() => {
            let fixes: Vec<String> = lacking
                .iter()
                .map(|n| missing_role_fix(n, client_id, mailbox))
                .collect();
            fixes.join("; and ")
        }
        (403, _) if message.contains("OData is disabled") || message.contains("RAOP") => format!(
            "an application access policy keeps app {client_id} out of {mailbox}: add the mailbox to the policy's mail-enabled security group (Add-DistributionGroupMember -Identity <policy group> -Member {mailbox}), check with Test-ApplicationAccessPolicy -Identity {mailbox} -AppId {client_id} (the policy governs Mail.ReadWrite and Mail.Send alike); better, move to RBAC for Applications (docs/microsoft365.md, step 9)"
        ),
        (403, _) => format!(
            "app {client_id} may not act on {mailbox}: the mailbox is outside its RBAC for Applications scope. Put it in the scope (with the scope of docs/microsoft365.md step 5: Set-Mailbox {mailbox} -CustomAttribute1 mailpipe-pool; Exchange takes up to an hour to notice), or assign the roles on a scope that holds it: New-ManagementRoleAssignment -App {client_id} -Role \"Application Mail.ReadWrite\" -CustomResourceScope \"mailpipe pool\" (and \"Application Mail.Send\" for transport = \"graph\"); check with Test-ServicePrincipalAuthorization -Identity {client_id} -Resource {mailbox} (docs/microsoft365.md, step 9)"
        ),
        (404, "MailboxNotEnabledForRESTAPI") => format!(
            "{mailbox} has no Exchange Online mailbox Graph can reach: assign it an Exchange Online licence (an on-premises or unlicensed mailbox is not served by Graph), wait for provisioning, then run check-pool again"
        ),
        (404, _) => format!(
            "Graph does not know {mailbox} in this tenant (ErrorInvalidUser): check the address and the tenant's tenant_id"
        ),
        (401, _) => format!(
            "Graph refused app {client_id}'s token: the app needs a service principal in this tenant (admin consent, or New-ServicePrincipal -AppId {client_id} -ObjectId <enterprise application's object id> for RBAC for Applications) and deliver.graph.scope = \"https://graph.microsoft.com/.default\""
        ),
        _ => format!("Graph answered {status} {code}: see the reply; check deliver.graph.base_url"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> GraphError {
        GraphError::Api {
            operation: "list_messages",
            mailbox: "m@contoso.com".into(),
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    const APP: &str = "app-id";

    #[test]
    fn each_graph_refusal_gets_its_own_fix() {
        let hint = |e: &GraphError| graph_hint(e, "m@contoso.com", APP, &[]);
        assert!(
            hint(&api(
                403,
                "ErrorAccessDenied",
                "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
            ))
            .contains("Test-ApplicationAccessPolicy -Identity m@contoso.com -AppId app-id")
        );
        assert!(
            hint(&api(
                403,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again."
            ))
            .contains(
                "Test-ServicePrincipalAuthorization -Identity app-id -Resource m@contoso.com"
            )
        );
        assert!(
            hint(&api(
                404,
                "MailboxNotEnabledForRESTAPI",
                "hosted on-premise"
            ))
            .contains("Exchange Online licence")
        );
        assert!(hint(&api(404, "ErrorInvalidUser", "invalid")).contains("does not know"));
        assert!(
            hint(&api(401, "InvalidAuthenticationToken", "x"))
                .contains("New-ServicePrincipal -AppId app-id")
        );
    }

    #[test]
    fn a_readable_mailbox_warns_of_a_forgotten_role_but_not_of_rbac_grants() {
        let need = needs(true, true);
        let some = super::super::graph_permissions::missing(&need, &["Mail.ReadWrite".into()]);
        let (graph, warnings) = after_inbox_read(false, &some, APP, "m@contoso.com");
        assert_eq!(graph, "ok (Inbox readable)");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("has no Mail.Send"));
        let all = super::super::graph_permissions::missing(&need, &[]);
        let (graph, warnings) = after_inbox_read(true, &all, APP, "m@contoso.com");
        assert!(warnings.is_empty());
        assert!(
            graph.contains("RBAC for Applications")
                && graph.contains("Application Mail.ReadWrite and Application Mail.Send")
                && graph.contains(
                    "Test-ServicePrincipalAuthorization -Identity app-id -Resource m@contoso.com"
                ),
            "{graph}"
        );
        let (graph, warnings) = after_inbox_read(false, &[], APP, "m@contoso.com");
        assert_eq!((graph.as_str(), warnings.len()), ("ok (Inbox readable)", 0));
    }

    #[test]
    fn a_refusal_with_roles_missing_from_the_token_names_the_roles() {
        let lacking = super::super::graph_permissions::missing(&needs(true, true), &[]);
        let h = graph_hint(
            &api(403, "ErrorAccessDenied", "Access is denied."),
            "m@contoso.com",
            APP,
            &lacking,
        );
        assert!(h.contains("-Role \"Application Mail.ReadWrite\""), "{h}");
        assert!(h.contains("-Role \"Application Mail.Send\""), "{h}");
    }
}
