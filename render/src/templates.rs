//! Templates: one directory per template, compiled once with MiniJinja at start.
//!
//! ```text
//! templates/
//!   invoice/
//!     subject.txt      (or subject.j2)   one line; line breaks become spaces
//!     body.html        auto-escaped HTML part
//!     body.txt         plain-text part (at least one of the two bodies)
//!     template.toml    optional: from, reply_to, headers, [[checks]]
//! ```
//! Undefined variables are errors (`UndefinedBehavior::Strict`), and the error names the
//! expression, so a job with missing data is dead-lettered with a reason a person can act on
//! instead of going out with blanks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mailpipe_common::domain::{BatchId, JobId, Mailbox, TemplateName};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};
use serde_json::Map;

/// Headers a template may not set: render and deliver own them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "sender",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "return-path",
    "received",
];

/// Everything a template directory declares besides its text.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDefaults {
    /// Used when the job has no `from`.
    #[serde(default)]
    pub from: Option<Mailbox>,
    /// Used when the job has no `reply_to`.
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
    /// Extra headers (`List-Unsubscribe`, `X-Campaign`...), written RFC 2047-encoded.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sample data `--check-templates` renders the template with.
    #[serde(default)]
    pub checks: Vec<TemplateCheck>,
}

/// A named sample: `[[checks]] name = "two items"` with `[checks.data]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateCheck {
    pub name: String,
    #[serde(default)]
    pub data: Map<String, serde_json::Value>,
}

/// One loaded template.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    pub name: String,
    pub defaults: TemplateDefaults,
    subject: String,
    html: Option<String>,
    text: Option<String>,
}

/// The rendered text of a message, before MIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedParts {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

/// What templates see. `data` is the job's data as given; the rest is read-only context.
#[derive(Debug, Clone, Serialize)]
pub struct RenderContext<'a> {
    pub data: &'a Map<String, serde_json::Value>,
    pub job: JobContext<'a>,
    pub to: &'a [Mailbox],
    pub cc: &'a [Mailbox],
    pub from: &'a Mailbox,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobContext<'a> {
    pub id: &'a JobId,
    pub batch: Option<&'a BatchId>,
    pub template: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown template {0:?}")]
    Unknown(String),
    #[error("undefined variable `{expression}` in {template}{}", line_suffix(*line))]
    Undefined {
        template: String,
        expression: String,
        line: Option<usize>,
    },
    #[error("{template}{}: {message}", line_suffix(*line))]
    Render {
        template: String,
        message: String,
        line: Option<usize>,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

/// Every problem found while loading, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("templates in {dir}: {}", problems.join("; "))]
pub struct TemplateLoadError {
    pub dir: PathBuf,
    pub problems: Vec<String>,
}

#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    specs: BTreeMap<String, TemplateSpec>,
}

impl Templates {
    /// Loads and compiles every template under `dir`, reporting all problems at once.
    pub fn load(dir: &Path) -> Result<Self, TemplateLoadError> {
        let fail = |problems: Vec<String>| TemplateLoadError {
            dir: dir.to_owned(),
            problems,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| fail(vec![format!("cannot read the directory: {e}")]))?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();

        let mut env = new_environment();
        let mut specs = BTreeMap::new();
        let mut problems = Vec::new();
        for path in dirs {
            let dir_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if dir_name.starts_with('.') {
                continue;
            }
            if let Err(e) = TemplateName::parse(&dir_name) {
                problems.push(format!("{dir_name}: not a valid template name: {e}"));
                continue;
            }
            match load_one(&mut env, &dir_name, &path) {
                Ok(spec) => {
                    specs.insert(dir_name, spec);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if specs.is_empty() && problems.is_empty() {
            problems.push("no templates found (expected one subdirectory per template)".to_owned());
        }
        if problems.is_empty() {
            Ok(Self { env, specs })
        } else {
            Err(fail(problems))
        }
    }

    pub fn get(&self, name: &str) -> Option<&TemplateSpec> {
        self.specs.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Renders subject and bodies of template `name`.
    pub fn render(
        &self,
        name: &str,
        ctx: &RenderContext<'_>,
    ) -> Result<RenderedParts, TemplateError> {
        let spec = self
            .specs
            .get(name)
            .ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
        let ctx = Value::from_serialize(ctx);
        let render = |file: &str| -> Result<String, TemplateError> {
            let tmpl = self
                .env
                .get_template(file)
                .map_err(|e| describe(file, &e))?;
            tmpl.render(&ctx).map_err(|e| describe(file, &e))
        };
        Ok(RenderedParts {
            subject: render(&spec.subject)?,
            html: spec.html.as_deref().map(render).transpose()?,
            text: spec.text.as_deref().map(render).transpose()?,
        })
    }

    /// Renders every template with each of its `[[checks]]`; returns every problem found
    /// (empty: all good). Templates without checks are only compiled, which `load` did.
    pub fn check(&self) -> Vec<String> {
        let placeholder = Mailbox::address_only(
            mailpipe_common::domain::EmailAddress::parse("check@example.com").expect("valid"),
        );
        let id = JobId::parse("check").expect("valid");
        let mut problems = Vec::new();
        for spec in self.specs.values() {
            let from = spec
                .defaults
                .from
                .clone()
                .unwrap_or_else(|| placeholder.clone());
            for check in &spec.defaults.checks {
                let ctx = RenderContext {
                    data: &check.data,
                    job: JobContext {
                        id: &id,
                        batch: None,
                        template: &spec.name,
                    },
                    to: std::slice::from_ref(&placeholder),
                    cc: &[],
                    from: &from,
                };
                if let Err(e) = self.render(&spec.name, &ctx) {
                    problems.push(format!("{} [check {:?}]: {e}", spec.name, check.name));
                }
            }
        }
        problems
    }
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Keeps the source with errors, so an undefined-variable error can name the expression.
    env.set_debug(true);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.add_filter("money", money);
    env
}

/// `{{ 1234.5 | money }}` → `1234.50`: two decimals, rounded half away from zero.
fn money(value: Value) -> Result<String, minijinja::Error> {
    // An undefined input (a misspelled variable) is reported as undefined, so the error
    // names the expression, not "cannot convert undefined to f64".
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "the value given to `money` is undefined",
        ));
    }
    let n = f64::try_from(value)?;
    Ok(format!("{:.2}", (n * 100.0).round() / 100.0))
}

fn load_one(
    env: &mut Environment<'static>,
    name: &str,
    dir: &Path,
) -> Result<TemplateSpec, Vec<String>> {
    let mut problems = Vec::new();
    let read = |file: &str| -> Option<Result<String, String>> {
        let path = dir.join(file);
        path.exists()
            .then(|| std::fs::read_to_string(&path).map_err(|e| format!("{name}/{file}: {e}")))
    };
    let compile = |env: &mut Environment<'static>,
                   file: &str,
                   problems: &mut Vec<String>|
     -> Option<String> {
        match read(file)? {
            Ok(source) => {
                let key = format!("{name}/{file}");
                match env.add_template_owned(key.clone(), source) {
                    Ok(()) => Some(key),
                    Err(e) => {
                        problems.push(format!("{key}: {}", describe(&key, &e)));
                        None
                    }
                }
            }
            Err(e) => {
                problems.push(e);
                None
            }
        }
    };

    let subject = match (
        dir.join("subject.txt").exists(),
        dir.join("subject.j2").exists(),
    ) {
        (true, true) => {
            problems.push(format!(
                "{name}: has both subject.txt and subject.j2; keep one"
            ));
            None
        }
        (false, false) => {
            problems.push(format!("{name}: subject.txt (or subject.j2) is missing"));
            None
        }
        (true, false) => compile(env, "subject.txt", &mut problems),
        (false, true) => compile(env, "subject.j2", &mut problems),
    };
    let html = compile(env, "body.html", &mut problems);
    let text = compile(env, "body.txt", &mut problems);
    if !dir.join("body.html").exists() && !dir.join("body.txt").exists() {
        problems.push(format!("{name}: needs body.html, body.txt or both"));
    }

    let defaults = match read("template.toml") {
        None => TemplateDefaults::default(),
        Some(Err(e)) => {
            problems.push(e);
            TemplateDefaults::default()
        }
        Some(Ok(text)) => match toml::from_str::<TemplateDefaults>(&text) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!(
                    "{name}/template.toml: {}",
                    e.to_string().trim_end()
                ));
                TemplateDefaults::default()
            }
        },
    };
    for (header, value) in &defaults.headers {
        if let Some(p) = header_problem(header, value) {
            problems.push(format!("{name}/template.toml: headers.{header}: {p}"));
        }
    }

    match subject {
        Some(subject) if problems.is_empty() => Ok(TemplateSpec {
            name: name.to_owned(),
            defaults,
            subject,
            html,
            text,
        }),
        _ => Err(problems),
    }
}

/// Header names are RFC 5322 field names; values one line of printable text.
fn header_problem(name: &str, value: &str) -> Option<String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Some("not a valid header name".into());
    }
    if RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Some("render sets this header itself; use from/reply_to or the job".into());
    }
    if value.chars().any(char::is_control) {
        return Some("value contains a control character (line break, tab...)".into());
    }
    None
}

/// Turns a MiniJinja error into ours; an undefined value names the failing expression.
fn describe(template: &str, e: &minijinja::Error) -> TemplateError {
    let template = e.name().unwrap_or(template).to_owned();
    let line = e.line();
    // Arithmetic or a filter given an undefined value (`{{ q * data.unit_prize }}`) fails as
    // an invalid operation: reported as undefined too, naming the expression.
    let undefined_operand = e.kind() == ErrorKind::InvalidOperation
        && e.detail().is_some_and(|d| d.contains("undefined"));
    if e.kind() == ErrorKind::UndefinedError || undefined_operand {
        let expression = match (e.template_source(), e.range()) {
            (Some(src), Some(range)) => widen(src, range).map(|s| s.trim().to_owned()),
            _ => None,
        };
        return TemplateError::Undefined {
            template,
            expression: expression.unwrap_or_else(|| "?".into()),
            line,
        };
    }
    let message = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    TemplateError::Render {
        template,
        message,
        line,
    }
}

/// MiniJinja's span for a failed attribute lookup starts at the `.`: walk back over the
/// rest of the path so the error says `data.customer.name`, not `.customer.name`.
fn widen(src: &str, range: std::ops::Range<usize>) -> Option<&str> {
    let is_path = |c: char| c.is_alphanumeric() || "_.[]\"'".contains(c);
    let start = src
        .get(..range.start)?
        .char_indices()
        .rev()
        .take_while(|&(_, c)| is_path(c))
        .last()
        .map_or(range.start, |(i, _)| i);
    src.get(start..range.end)
}
