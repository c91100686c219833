//! What an app may do in Graph and where: the mailbox must have Exchange Online (`404
//! MailboxNotEnabledForRESTAPI` otherwise), the request needs an application permission (the
//! token's `roles`, what an admin consented to) and the mailbox must be in the app's scope
//! (RBAC for Applications, `[[apps]] graph_scope`). Graph answers the last two `403
//! ErrorAccessDenied` alike, so a client cannot tell them apart by the answer alone;
//! `check-pool` reads the `roles` claim to say which it is. Called once, from `graph::call`.

use crate::state::Shared;
use crate::tokens::IssuedToken;

/// Graph's text for a request the app holds no permission for (a missing role, or a mailbox
/// outside its RBAC scope).
pub(crate) const ACCESS_DENIED: &str = "Access is denied. Check credentials and try again.";

/// The application permissions that allow `method` on `path` (any one of them).
fn permitted_by(method: &str, path: &str) -> &'static [&'static str] {
    if method == "POST" && path.ends_with("/send") {
        &["Mail.Send"]
    } else if method == "GET" {
        &["Mail.ReadWrite", "Mail.Read"]
    } else {
        &["Mail.ReadWrite"]
    }
}

/// Graph's refusal: status, error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

/// `Err` is Graph's refusal of `token`'s app acting on `mailbox` (lower case, known to the
/// directory) with this request.
pub(crate) fn check(
    shared: &Shared,
    token: &IssuedToken,
    mailbox: &str,
    method: &str,
    path: &str,
) -> Result<(), Refusal> {
    if shared
        .directory
        .mailbox(mailbox)
        .is_some_and(|m| !m.licensed)
    {
        return Err(Refusal {
            status: 404,
            code: "MailboxNotEnabledForRESTAPI",
            message: "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
                .into(),
        });
    }
    let denied = || Refusal {
        status: 403,
        code: "ErrorAccessDenied",
        message: ACCESS_DENIED.into(),
    };
    let needed = permitted_by(method, path);
    if !token
        .roles
        .iter()
        .any(|r| needed.iter().any(|n| r.eq_ignore_ascii_case(n)))
    {
        return Err(denied());
    }
    let in_scope = match shared
        .directory
        .apps
        .get(&token.client_id)
        .and_then(|app| app.graph_scope.as_ref())
    {
        None => true,
        Some(scope) => scope.iter().any(|m| m.eq_ignore_ascii_case(mailbox)),
    };
    if !in_scope {
        return Err(denied());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::permitted_by;

    #[test]
    fn sending_needs_mail_send_and_everything_else_mail_readwrite() {
        assert_eq!(
            permitted_by("POST", "/v1.0/users/a@b/messages/x/send"),
            ["Mail.Send"]
        );
        assert!(
            permitted_by("GET", "/v1.0/users/a@b/mailFolders/inbox/messages")
                .contains(&"Mail.Read")
        );
        assert_eq!(
            permitted_by("POST", "/v1.0/users/a@b/messages"),
            ["Mail.ReadWrite"]
        );
        assert_eq!(
            permitted_by("DELETE", "/v1.0/users/a@b/messages/x"),
            ["Mail.ReadWrite"]
        );
    }
}
