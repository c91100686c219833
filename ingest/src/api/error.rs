//! Every error the API answers is JSON: `{"error": "...", "field": "...", "errors": [...]}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem (`{field, reason}`, or `{line, field, reason}` for batches).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Value>,
    /// Extra members merged into the body (a batch report's counts).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            field: None,
            errors: Vec::new(),
            extra: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn errors<T: Serialize>(mut self, errors: &[T]) -> Self {
        self.errors = errors
            .iter()
            .filter_map(|e| serde_json::to_value(e).ok())
            .collect();
        self
    }

    pub fn extra(mut self, value: &impl Serialize) -> Self {
        if let Ok(Value::Object(map)) = serde_json::to_value(value) {
            self.extra = Some(map);
        }
        self
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token (Authorization: Bearer <token>)",
        )
    }

    pub fn unavailable(why: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, why)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut res = (status, Json(self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        res
    }
}

impl From<mailpipe_common::store::StoreError> for ApiError {
    /// The database away is a 503 (retry); anything else a 500 saying what was being
    /// done. The database's own text stays in the log: it may quote the client's input
    /// back, or describe the schema.
    fn from(e: mailpipe_common::store::StoreError) -> Self {
        use mailpipe_common::store::StoreError;
        match &e {
            StoreError::Unavailable(_) | StoreError::Stopped => {
                tracing::warn!(error = %e, "the database is unavailable");
                ApiError::unavailable("the database is unreachable; retry shortly")
            }
            StoreError::Query { what, .. } => {
                tracing::error!(error = %e, "database query failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error while {what}; the details are in ingest's log"),
                )
            }
            _ => {
                tracing::error!(error = %e, "database failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; the details are in ingest's log",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailpipe_common::store::StoreError;

    #[test]
    fn database_errors_keep_their_text_out_of_the_answer() {
        let inner =
            || sqlx::Error::Protocol("invalid byte sequence for encoding \"UTF8\": 0x00".into());
        let answers = [
            ApiError::from(StoreError::Query {
                what: "listing jobs",
                source: inner(),
            }),
            ApiError::from(StoreError::Unavailable(inner())),
        ];
        for a in answers {
            assert!(
                !a.error.contains("0x00") && !a.error.contains("UTF8"),
                "{}",
                a.error
            );
        }
    }
}
