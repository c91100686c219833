//! Rendering a console page: the templates (embedded, MiniJinja with HTML escaping), the
//! layout around every page, and the error page. Values reach templates through serde,
//! so a template shows only what a handler chose to give it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{AutoEscape, Environment, Value};

use super::session::Session;

/// Every template, by name.
const TEMPLATES: [(&str, &str); 9] = [
    ("layout.html", include_str!("templates/layout.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("batches.html", include_str!("templates/batches.html")),
    ("batch.html", include_str!("templates/batch.html")),
    ("pool.html", include_str!("templates/pool.html")),
    ("decisions.html", include_str!("templates/decisions.html")),
    (
        "suppressions.html",
        include_str!("templates/suppressions.html"),
    ),
];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.add_filter("seconds", seconds);
    env.add_filter("urlencode", |v: String| -> String {
        url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
    });
    for (name, source) in TEMPLATES {
        // The templates are part of the binary; a unit test renders each.
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "console template does not parse");
        }
    }
    env
});

/// `3725.2` → `1h 2m 6s` (an ETA, a wait).
fn seconds(value: Value) -> String {
    let Some(s) = f64::try_from(value).ok().filter(|s| s.is_finite()) else {
        return "—".into();
    };
    let s = s.max(0.0).ceil() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// One page to render: its template (without `.html`), title and values.
pub struct Page {
    template: &'static str,
    values: BTreeMap<&'static str, Value>,
}

impl Page {
    pub fn new(template: &'static str, title: &str) -> Self {
        let mut values = BTreeMap::new();
        values.insert("title", Value::from(title));
        Self { template, values }
    }

    pub fn with(mut self, key: &'static str, value: impl serde::Serialize) -> Self {
        self.values.insert(key, Value::from_serialize(value));
        self
    }

    /// The page for a logged-in session (its forms carry the session's CSRF token).
    pub fn render(self, session: &Session) -> Response {
        self.render_with_csrf(&session.csrf)
    }

    pub fn render_with_csrf(mut self, csrf: &str) -> Response {
        self.values.insert("csrf", Value::from(csrf));
        let name = format!("{}.html", self.template);
        let rendered = ENV
            .get_template(&name)
            .and_then(|t| t.render(Value::from_serialize(&self.values)));
        match rendered {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(template = %name, error = %e, "console page failed to render");
                plain_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page failed to render",
                )
            }
        }
    }
}

fn plain_error(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

/// An error page (no session needed; nothing but the message is shown).
pub fn error(status: StatusCode, message: &str) -> Response {
    let mut response = Page::new("error", "Error")
        .with("message", message)
        .with("status", status.as_u16())
        .render_with_csrf("")
        .into_response();
    *response.status_mut() = status;
    response
}

/// An API error as a page (same status and words as the API would answer).
pub fn api_error(e: crate::api::ApiError) -> Response {
    error(e.status, &e.error)
}

/// A database failure as a page: what was being done, never the database's own text.
pub fn store_error(e: mailpipe_common::store::StoreError) -> Response {
    api_error(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        let html = ENV
            .render_str("{{ x | urlencode }}", minijinja::context! { x => "a b&c" })
            .unwrap();
        assert_eq!(html, "a+b%26c");
    }

    #[test]
    fn every_template_parses() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(seconds(Value::from(0.2)), "1s");
        assert_eq!(seconds(Value::from(125.0)), "2m 5s");
        assert_eq!(seconds(Value::from(3725.2)), "1h 2m");
        assert_eq!(seconds(Value::from(())), "—");
    }

    #[test]
    fn values_are_escaped() {
        let html = ENV
            .render_str("{{ x }}", minijinja::context! { x => "<script>" })
            .unwrap();
        assert_eq!(html, "&lt;script&gt;");
    }
}
