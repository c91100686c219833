//! docs: ingest/openapi.yaml describes exactly the routes the router has, and its
//! example jobs parse as jobs.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use mailpipe_common::contract::Job;
use mailpipe_ingest::api::{OPENAPI_YAML, api_routes};

/// `(method, path)` pairs under `paths:` (two-space path keys, four-space method keys).
fn spec_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in OPENAPI_YAML.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line
            .strip_prefix("  ")
            .and_then(|l| l.strip_suffix(':'))
            .filter(|p| p.starts_with('/'))
        {
            path = Some(p.to_owned());
        } else if let Some(m) = line
            .strip_prefix("    ")
            .and_then(|l| l.strip_suffix(':'))
            .filter(|m| !m.starts_with(' '))
            && ["get", "post", "put", "patch", "delete"].contains(&m)
        {
            routes.insert((m.to_uppercase(), path.clone().expect("method under a path")));
        }
    }
    routes
}

#[test]
fn every_route_is_described_and_everything_described_is_routed() {
    let routed: BTreeSet<(String, String)> = api_routes()
        .into_iter()
        .map(|(m, p, _, _)| (m.to_string(), p.to_owned()))
        .collect();
    assert_eq!(spec_routes(), routed);
}

/// `(method, path) -> roles` from each operation's `security: - bearer: [...]`.
fn spec_scopes() -> std::collections::BTreeMap<(String, String), Vec<String>> {
    let mut scopes = std::collections::BTreeMap::new();
    let (mut path, mut method) = (String::new(), String::new());
    for line in OPENAPI_YAML.lines() {
        if let Some(p) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && p.starts_with('/')
        {
            path = p.to_owned();
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            && ["get", "post", "put", "patch", "delete"].contains(&m)
        {
            method = m.to_uppercase();
        } else if let Some(list) = line
            .strip_prefix("        - bearer: [")
            .and_then(|l| l.strip_suffix(']'))
        {
            let roles = list.split(", ").map(str::to_owned).collect();
            scopes.insert((method.clone(), path.clone()), roles);
        }
    }
    scopes
}

#[test]
fn each_operation_lists_as_scopes_exactly_the_roles_that_may_call_it() {
    use mailpipe_ingest::api::Role;
    let routed: std::collections::BTreeMap<(String, String), Vec<String>> = api_routes()
        .into_iter()
        .filter_map(|(m, p, _, action)| {
            let roles = Role::allowed_to(action?)
                .into_iter()
                .map(|r| r.as_str().to_owned())
                .collect();
            Some(((m.to_string(), p.to_owned()), roles))
        })
        .collect();
    assert_eq!(spec_scopes(), routed);
}

#[test]
fn example_jobs_in_the_spec_parse_as_jobs() {
    let mut examples = 0;
    for line in OPENAPI_YAML.lines() {
        let Some(json) = line.trim_start().strip_prefix("value: ") else {
            continue;
        };
        let job = Job::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("example {json}: {e}"));
        assert!(job.validate(&Default::default()).is_empty());
        examples += 1;
    }
    let mut in_ndjson = false;
    for line in OPENAPI_YAML.lines() {
        if line.trim() == "application/x-ndjson:" {
            in_ndjson = true;
        } else if in_ndjson && line.trim_start().starts_with('{') {
            Job::from_json(line.trim().as_bytes())
                .unwrap_or_else(|e| panic!("ndjson example {line}: {e}"));
            examples += 1;
        } else if in_ndjson && line.trim() == "text/csv:" {
            in_ndjson = false;
        }
    }
    assert!(examples >= 4, "found only {examples} examples");
}

/// The `^[...]+$` character class of a schema component, as the set of ASCII characters
/// it admits (ranges `A-Z` and single characters; a trailing `-` is literal).
fn pattern_chars(component: &str) -> (BTreeSet<char>, usize) {
    let mut lines = OPENAPI_YAML
        .lines()
        .skip_while(|l| *l != format!("    {component}:"))
        .skip(1)
        .take_while(|l| l.starts_with("      "));
    let block: Vec<&str> = lines.by_ref().collect();
    let value = |key: &str| {
        block
            .iter()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("{component} has no {key}"))
            .trim()
            .to_owned()
    };
    let pattern = value("pattern:");
    let class = pattern
        .trim_matches('"')
        .strip_prefix("^[")
        .and_then(|p| p.strip_suffix("]+$"))
        .unwrap_or_else(|| panic!("{component}: pattern {pattern} is not ^[...]+$"));
    let chars: Vec<char> = class.chars().collect();
    let mut set = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            set.extend(chars[i]..=chars[i + 2]);
            i += 3;
        } else {
            set.insert(chars[i]);
            i += 1;
        }
    }
    (set, value("maxLength:").parse().unwrap())
}

#[test]
fn id_patterns_are_exactly_what_the_server_accepts() {
    use mailpipe_common::domain::{BatchId, JobId, TemplateName};
    type Parse = fn(&str) -> bool;
    let cases: [(&str, Parse, usize); 3] = [
        ("JobId", |s| JobId::parse(s).is_ok(), JobId::MAX_LEN),
        ("BatchId", |s| BatchId::parse(s).is_ok(), BatchId::MAX_LEN),
        (
            "TemplateName",
            |s| TemplateName::parse(s).is_ok(),
            TemplateName::MAX_LEN,
        ),
    ];
    for (component, parses, max) in cases {
        let (allowed, max_length) = pattern_chars(component);
        assert_eq!(max_length, max, "{component} maxLength");
        for c in (0u8..=127).map(char::from) {
            assert_eq!(
                parses(&c.to_string()),
                allowed.contains(&c),
                "{component}: {c:?}"
            );
        }
        assert!(!parses(""), "{component}: minLength 1");
        assert!(parses(&"a".repeat(max)) && !parses(&"a".repeat(max + 1)));
    }
}

/// Status codes documented for `method path`.
fn documented(method: &str, path: &str) -> BTreeSet<u16> {
    let mut codes = BTreeSet::new();
    let mut lines = OPENAPI_YAML
        .lines()
        .skip_while(|l| *l != format!("  {path}:"));
    let _ = lines.by_ref().find(|l| *l == format!("    {method}:"));
    for l in lines.take_while(|l| l.starts_with("      ")) {
        if let Some(code) = l
            .strip_prefix("        \"")
            .and_then(|l| l.strip_suffix("\":"))
        {
            codes.insert(code.parse().unwrap());
        }
    }
    codes
}

/// What each handler can answer (ingest/src/api/*.rs), besides 401 and 403 (the token's
/// role) for every route with a token.
#[test]
fn every_status_the_server_answers_is_documented() {
    for (method, path, codes) in [
        (
            "post",
            "/v1/jobs",
            &[200, 202, 400, 408, 409, 413, 415, 422, 503][..],
        ),
        ("get", "/v1/jobs", &[200, 400, 503][..]),
        ("get", "/v1/jobs/{id}", &[200, 400, 404, 503][..]),
        (
            "post",
            "/v1/batches",
            &[202, 400, 408, 409, 413, 415, 422, 503][..],
        ),
        ("get", "/v1/batches/{id}", &[200, 400, 404, 503][..]),
        (
            "post",
            "/v1/batches/{id}/pause",
            &[200, 400, 404, 409, 503][..],
        ),
        (
            "post",
            "/v1/batches/{id}/resume",
            &[200, 400, 404, 409, 503][..],
        ),
        ("post", "/v1/batches/{id}/cancel", &[200, 400, 404, 503][..]),
    ] {
        let mut expected: BTreeSet<u16> = codes.iter().copied().collect();
        expected.extend([401, 403]);
        assert_eq!(documented(method, path), expected, "{method} {path}");
    }
}
