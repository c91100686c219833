//! Who may do what: each API token has a [`Role`], and every route (and every console
//! action) names the [`Action`] it performs. [`Role::allows`] is the one place that says
//! which role may do which action; [`Caller`] adds the owner confinement of `submit`
//! tokens (they see and control only the batches they created).

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// What an API token may do (`role = "..."` in `ingest.api_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Create jobs and batches; read, pause, resume and cancel its own batches (those
    /// created with its owner label) and their jobs.
    Submit,
    /// Read everything: batches, jobs, the suppression list. Changes nothing.
    Read,
    /// Everything: read, submit, pause/resume/cancel any batch, replay dead letters,
    /// settle uncertain sends, manage the suppression list. A token without a role is
    /// `operate` (what every token could do before roles existed).
    Operate,
}

/// Something a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Submit jobs or a batch upload.
    Submit,
    /// Read batches and jobs (a `submit` token: its own only).
    Read,
    /// Pause, resume or cancel a batch (a `submit` token: its own only).
    Control,
    /// Read the suppression list.
    ReadSuppressions,
    /// Add to or remove from the suppression list.
    ManageSuppressions,
    /// Replay dead letters.
    Replay,
    /// Decide an uncertain send (mark sent, resend).
    Settle,
    /// Drop or retry webhook deliveries.
    ManageWebhooks,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Submit, Role::Read, Role::Operate];

    /// Whether this role may do `action` at all (a `submit` token is then confined to
    /// its own batches: [`Caller::sees`]).
    pub fn allows(self, action: Action) -> bool {
        use Action as A;
        match self {
            Role::Operate => true,
            Role::Read => matches!(action, A::Read | A::ReadSuppressions),
            Role::Submit => matches!(action, A::Submit | A::Read | A::Control),
        }
    }

    /// The roles that may do `action`, in [`Role::ALL`] order (the OpenAPI scopes).
    pub fn allowed_to(action: Action) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.allows(action)).collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submit => "submit",
            Role::Read => "read",
            Role::Operate => "operate",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The token behind a request: its role and owner label. Put in the request by the
/// token check; handlers (and the console) take it as an extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The token's owner label (`owner = "..."`); recorded on the batches it creates.
    pub owner: Option<String>,
}

impl Caller {
    /// `Ok` when the role allows `action`; else the 403 naming the roles that would.
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if self.role.allows(action) {
            return Ok(());
        }
        let needed: Vec<&str> = Role::allowed_to(action)
            .into_iter()
            .map(Role::as_str)
            .collect();
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this token's role is `{}`; this needs the role `{}` (ingest.api_tokens[].role)",
                self.role,
                needed.join("` or `")
            ),
        )
        .field("authorization"))
    }

    /// The owner a caller is confined to: `Some` for a `submit` token (its batches only),
    /// `None` for the roles that see every batch.
    pub fn confined_to(&self) -> Option<Option<&str>> {
        (self.role == Role::Submit).then_some(self.owner.as_deref())
    }

    /// The owner label a list is filtered by: a `submit` token's own (an empty label,
    /// which matches no batch, when it has none); `None` for the roles that see all.
    pub fn list_filter(&self) -> Option<String> {
        self.confined_to()
            .map(|owner| owner.unwrap_or_default().to_owned())
    }

    /// Whether the caller may see a batch whose owner label is `batch_owner`. A confined
    /// caller sees only batches with its own label (a batch without one is nobody's).
    pub fn sees(&self, batch_owner: Option<&str>) -> bool {
        match self.confined_to() {
            None => true,
            Some(mine) => mine.is_some() && mine == batch_owner,
        }
    }

    /// How this caller opens a batch it submits to.
    pub fn opener(&self) -> mailpipe_common::store::Opener<'_> {
        mailpipe_common::store::Opener {
            owner: self.owner.as_deref(),
            confined: self.confined_to().is_some(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Set by the token check on every route that needs a token; absent only on an
        // open route, which must not ask for a caller.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_what_security_md_says() {
        use Action as A;
        let all = [
            A::Submit,
            A::Read,
            A::Control,
            A::ReadSuppressions,
            A::ManageSuppressions,
            A::Replay,
            A::Settle,
            A::ManageWebhooks,
        ];
        let allowed =
            |r: Role| -> Vec<Action> { all.into_iter().filter(|a| r.allows(*a)).collect() };
        assert_eq!(allowed(Role::Operate), all);
        assert_eq!(allowed(Role::Read), [A::Read, A::ReadSuppressions]);
        assert_eq!(allowed(Role::Submit), [A::Submit, A::Read, A::Control]);
    }

    #[test]
    fn a_refusal_names_the_role_needed() {
        let reader = Caller {
            role: Role::Read,
            owner: None,
        };
        let e = reader.require(Action::Control).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.error.contains("`submit` or `operate`"), "{}", e.error);
        assert!(reader.require(Action::Read).is_ok());
    }

    #[test]
    fn a_submit_token_sees_only_batches_with_its_owner_label() {
        let billing = Caller {
            role: Role::Submit,
            owner: Some("billing".into()),
        };
        assert!(billing.sees(Some("billing")));
        assert!(!billing.sees(Some("hr")));
        assert!(!billing.sees(None));
        let operator = Caller {
            role: Role::Operate,
            owner: None,
        };
        assert!(operator.sees(Some("hr")) && operator.sees(None));
    }
}
