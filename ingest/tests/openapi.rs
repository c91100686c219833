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
