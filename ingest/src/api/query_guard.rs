//! Every query parameter, name and value, is refused with a 400 naming it when it holds a
//! control character (NUL above all: PostgreSQL refuses it in text, and a CR or LF would
//! forge log lines). Checked once, in front of every route, so a route added later cannot
//! forget it; the routes then parse their parameters into domain types.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The first parameter holding a control character: its name (as far as it can be
/// shown) and the character.
pub fn first_control_character(query: &str) -> Option<(String, char)> {
    url::form_urlencoded::parse(query.as_bytes()).find_map(|(name, value)| {
        let bad = name.chars().chain(value.chars()).find(|c| c.is_control())?;
        let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
        Some((shown, bad))
    })
}

/// The 400 for a text field (query parameter or body member) holding a control character.
pub fn control_character(field: &str, c: char) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "{field}: contains the control character U+{:04X}; control characters are refused",
            u32::from(c)
        ),
    )
    .field(field)
}

pub async fn refuse_control_characters(request: Request, next: Next) -> Response {
    if let Some((name, c)) = request.uri().query().and_then(first_control_character) {
        return control_character(&name, c).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_parameter_holding_a_control_character() {
        assert_eq!(
            first_control_character("batch=b&recipient=x%00y"),
            Some(("recipient".into(), '\0'))
        );
        assert_eq!(
            first_control_character("after=a%0Db"),
            Some(("after".into(), '\r'))
        );
        assert_eq!(
            first_control_character("a%00b=1"),
            Some(("ab".into(), '\0'))
        );
        assert_eq!(
            first_control_character("recipient=ann%40example.com&x=%C3%A9"),
            None
        );
    }
}
