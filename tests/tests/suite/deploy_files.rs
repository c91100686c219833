//! Checks the deployment files that cannot run here (no Docker, no Kubernetes): every YAML
//! under deploy/ parses, the Grafana dashboard and the alert rules use only documented
//! metrics, Kubernetes objects are well-formed, the image builds the way the README says.
//! `promtool` checks of the Prometheus files run in .ci/run. The helpers in [`names`] are
//! shared with monitoring.rs (which includes this file).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::Value as Yaml;

/// Metric names referenced by docs, dashboards and rules.
pub mod names {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    pub fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .to_owned()
    }

    pub fn read(rel: &str) -> String {
        let path = root().join(rel);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Metric names in a PromQL expression: identifiers that are not functions, keywords,
    /// label names (inside `{}` or a `by (...)` list), strings, durations or `$variables`.
    pub fn in_promql(expr: &str) -> BTreeSet<String> {
        // Aggregation operators may be followed by `by (...)` rather than `(`.
        const KEYWORDS: [&str; 26] = [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
            "bool",
            "and",
            "or",
            "unless",
            "offset",
            "inf",
            "nan",
            "atan2",
            "sum",
            "avg",
            "min",
            "max",
            "count",
            "group",
            "stddev",
            "stdvar",
            "topk",
            "bottomk",
            "quantile",
            "count_values",
        ];
        const LABEL_LISTS: [&str; 6] = [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ];
        let chars: Vec<char> = expr.chars().collect();
        let mut out = BTreeSet::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '"' | '\'' | '`' => {
                    i += 1;
                    while i < chars.len() && chars[i] != c {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                '{' | '[' => {
                    let close = if c == '{' { '}' } else { ']' };
                    while i < chars.len() && chars[i] != close {
                        if chars[i] == '"' {
                            i += 1;
                            while i < chars.len() && chars[i] != '"' {
                                i += if chars[i] == '\\' { 2 } else { 1 };
                            }
                        }
                        i += 1;
                    }
                    i += 1;
                }
                '$' => {
                    i += 1;
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
                c if c.is_ascii_digit()
                    || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
                {
                    // a number, exponent and duration suffixes included
                    while i < chars.len()
                        && (chars[i].is_ascii_alphanumeric()
                            || chars[i] == '.'
                            || chars[i] == '+'
                            || chars[i] == '-')
                    {
                        if (chars[i] == '+' || chars[i] == '-')
                            && !matches!(chars[i - 1], 'e' | 'E')
                        {
                            break;
                        }
                        i += 1;
                    }
                }
                c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                    let start = i;
                    while i < chars.len()
                        && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                    {
                        i += 1;
                    }
                    let word: String = chars[start..i].iter().collect();
                    let mut j = i;
                    while j < chars.len() && chars[j].is_whitespace() {
                        j += 1;
                    }
                    let call = chars.get(j) == Some(&'(');
                    if call && LABEL_LISTS.contains(&word.as_str()) {
                        while j < chars.len() && chars[j] != ')' {
                            j += 1;
                        }
                        i = j + 1;
                    } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                        out.insert(word);
                    }
                }
                _ => i += 1,
            }
        }
        out
    }

    /// The metric family a sample name belongs to (`x_bucket` → `x` for histograms).
    pub fn family(name: &str) -> &str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                return base;
            }
        }
        name
    }

    /// The first column of the catalog tables in docs/metrics.md.
    pub fn documented() -> BTreeSet<String> {
        read("docs/metrics.md")
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|n| n.starts_with("mailpipe_") || n.starts_with("rabbitmq_"))
            .map(str::to_owned)
            .collect()
    }

    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    /// Every `expr` of every panel of the Grafana dashboards.
    pub fn dashboard_exprs() -> Vec<(PathBuf, String)> {
        let dir = root().join("deploy/grafana/dashboards");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("readable dashboard");
                let json: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
                let mut exprs = Vec::new();
                collect_exprs(&json, &mut exprs);
                out.extend(exprs.into_iter().map(|e| (path.clone(), e)));
            }
        }
        out
    }

    /// (alert or record name, expr) of every rule in deploy/prometheus/alerts.yml.
    pub fn rule_exprs() -> Vec<(String, String)> {
        let rules: serde_yaml::Value =
            serde_yaml::from_str(&read("deploy/prometheus/alerts.yml")).expect("alerts.yml parses");
        let mut out = Vec::new();
        for group in rules["groups"].as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                let name = rule["alert"]
                    .as_str()
                    .or_else(|| rule["record"].as_str())
                    .expect("alert or record name");
                out.push((
                    name.to_owned(),
                    rule["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
        out
    }

    /// Recording rules defined in alerts.yml (names with a colon).
    pub fn recorded() -> BTreeSet<String> {
        rule_exprs()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.contains(':'))
            .collect()
    }

    /// Every `mailpipe_*` family named in docs/metrics.md, the dashboards and the rules.
    pub fn referenced_mailpipe_metrics() -> BTreeSet<String> {
        let mut all: BTreeSet<String> = documented()
            .into_iter()
            .filter(|n| n.starts_with("mailpipe_"))
            .collect();
        let exprs = dashboard_exprs()
            .into_iter()
            .map(|(_, e)| e)
            .chain(rule_exprs().into_iter().map(|(_, e)| e));
        for e in exprs {
            all.extend(
                in_promql(&e)
                    .into_iter()
                    .filter(|n| n.starts_with("mailpipe_"))
                    .map(|n| family(&n).to_owned()),
            );
        }
        all
    }
}

use names::{read, root};

fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every document of a (multi-document) YAML file.
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

/// A metric used in a query must be documented, a recording rule, or the broker's / Prometheus'.
fn check_known(
    what: &str,
    expr: &str,
    documented: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    names::in_promql(expr)
        .into_iter()
        .filter(|n| {
            let fam = names::family(n);
            !(documented.contains(fam)
                || recorded.contains(n)
                || n.starts_with("rabbitmq_")
                || n == "up"
                || n == "vector")
        })
        .map(|n| format!("{what}: `{n}` is not in docs/metrics.md (expr: {expr})"))
        .collect()
}

#[test]
fn every_yaml_under_deploy_parses() {
    let files = files_under(&root().join("deploy"), &["yml", "yaml"]);
    assert!(
        files.len() >= 10,
        "expected the deploy/ YAML files, found {files:?}"
    );
    for f in files {
        assert!(!yaml_docs(&f).is_empty(), "{} has no document", f.display());
    }
}

#[test]
fn promql_names_are_extracted() {
    let n = names::in_promql(
        r#"histogram_quantile(0.95, sum by (le, route) (rate(mailpipe_x_bucket{route=~"/v1/.*"}[5m]))) / on () group_left up{job="a"} or vector(1e-9) > 4 * 3600 unless foo:bar offset 10m and $__range"#,
    );
    assert_eq!(
        n,
        ["foo:bar", "mailpipe_x_bucket", "up"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
}

#[test]
fn grafana_dashboard_parses_and_uses_documented_metrics() {
    let exprs = names::dashboard_exprs();
    assert!(
        exprs.len() >= 20,
        "the dashboard should have its panels, found {} queries",
        exprs.len()
    );
    let (documented, recorded) = (names::documented(), names::recorded());
    let problems: Vec<String> = exprs
        .iter()
        .flat_map(|(p, e)| check_known(&p.display().to_string(), e, &documented, &recorded))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The panels the issue asks for are there.
    let all: String = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "mailpipe_deliver_mailbox_messages_left",
        "mailpipe_deliver_mailbox_recipients_left",
        "mailpipe_deliver_messages_total",
        "mailpipe_deliver_smtp_duration_seconds_bucket",
        "rabbitmq_queue_messages_ready",
        "mailpipe_ingest_jobs_total",
    ] {
        assert!(all.contains(needle), "no dashboard panel uses {needle}");
    }
}

/// Every `queue=~"..."` selector of the dashboard's queue panels, with `$prefix` = `prefix`,
/// as Prometheus anchors it.
fn dashboard_queue_selectors(prefix: &str) -> Vec<(String, regex::Regex)> {
    let selector = regex::Regex::new(r#"queue=~"((?:[^"\\]|\\.)*)""#).unwrap();
    names::dashboard_exprs()
        .into_iter()
        .flat_map(|(_, e)| {
            selector
                .captures_iter(&e)
                .map(|c| c[1].replace("\\\\", "\\").replace("$prefix", prefix))
                .collect::<Vec<_>>()
        })
        .map(|re| {
            let anchored = regex::Regex::new(&format!("^(?:{re})$")).unwrap();
            (re, anchored)
        })
        .collect()
}

#[test]
fn the_dashboards_queue_panels_cover_every_work_queue_the_code_declares() {
    use mailpipe_common::amqp::{Stage, Topology};
    use mailpipe_common::contract::Lane;
    let mut settings = mailpipe_common::testkit::settings("dash");
    settings.prefix = "mailpipe".into();
    settings.bulk_queues = 4;
    let t = Topology::new(&settings);
    let mut work: Vec<String> = t.stage_queues(Stage::Deliver);
    work.extend([Lane::Bulk, Lane::Transactional].map(|l| t.render_queue(l)));
    assert!(work.len() >= 7, "{work:?}");
    let selectors = dashboard_queue_selectors("mailpipe");
    let ready: Vec<_> = selectors
        .iter()
        .filter(|(re, _)| re.contains("retry"))
        .collect();
    assert!(
        !ready.is_empty(),
        "no backlog panel selects queues: {selectors:?}"
    );
    for (re, anchored) in &selectors {
        for q in &work {
            if (re.contains("deliver") && q.contains(".deliver"))
                || (re.contains("render") && q.contains(".render"))
            {
                assert!(
                    anchored.is_match(q),
                    "the panel selecting {re:?} misses the queue {q}"
                );
            }
        }
        assert!(
            !anchored.is_match(&t.dead_log_queue()),
            "{re:?} counts the dead-letter log copy as a backlog"
        );
    }
}

#[test]
fn grafana_provisioning_points_at_the_dashboards() {
    let provider = yaml_docs(&root().join("deploy/grafana/provisioning/dashboards/mailpipe.yaml"));
    assert!(
        provider[0]["providers"][0]["options"]["path"]
            .as_str()
            .is_some(),
        "dashboard provider without a path"
    );
    let ds = yaml_docs(&root().join("deploy/grafana/provisioning/datasources/prometheus.yaml"));
    assert_eq!(ds[0]["datasources"][0]["type"].as_str(), Some("prometheus"));
}

#[test]
fn alert_rules_use_documented_metrics_and_have_runbooks() {
    let (documented, recorded) = (names::documented(), names::recorded());
    let ops = read("docs/operations.md").to_ascii_lowercase();
    let mut problems = Vec::new();
    for (name, expr) in names::rule_exprs() {
        problems.extend(check_known(&name, &expr, &documented, &recorded));
        if !name.contains(':') && !ops.contains(&format!("### {}", name.to_ascii_lowercase())) {
            problems.push(format!(
                "alert {name} has no `### {name}` runbook entry in docs/operations.md"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn kubernetes_objects_are_well_formed() {
    let mut kinds = Vec::new();
    for f in files_under(&root().join("deploy/k8s"), &["yml", "yaml"]) {
        for doc in yaml_docs(&f) {
            let at = |k: &str| format!("{}: {k} missing in {doc:?}", f.display());
            assert!(
                doc["apiVersion"].as_str().is_some_and(|s| !s.is_empty()),
                "{}",
                at("apiVersion")
            );
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}", at("kind")))
                .to_owned();
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{}", at("metadata.name")))
                .to_owned();
            kinds.push((kind, name, doc));
        }
    }
    let find = |kind: &str, prefix: &str| {
        kinds
            .iter()
            .filter(move |(k, n, _)| k == kind && n.starts_with(prefix))
            .map(|(_, _, d)| d)
            .collect::<Vec<_>>()
    };
    for (kind, prefix) in [
        ("Deployment", "mailpipe-ingest"),
        ("Deployment", "mailpipe-render"),
        ("Deployment", "mailpipe-deliver"),
        ("ConfigMap", "mailpipe"),
        ("Secret", "mailpipe"),
        ("Service", "mailpipe-deliver"),
        ("ServiceMonitor", "mailpipe"),
        ("PodDisruptionBudget", "mailpipe-render"),
        ("ScaledObject", "mailpipe-render"),
    ] {
        assert!(!find(kind, prefix).is_empty(), "no {kind} named {prefix}*");
    }
    for d in find("Deployment", "mailpipe-deliver") {
        // Several replicas share a pool through fenced mailbox leases; a rollout brings the
        // new pod up before an old one goes, so the pool never stops.
        assert!(
            d["spec"]["replicas"].as_u64().is_some_and(|n| n >= 2),
            "deliver runs several replicas per pool"
        );
        assert_eq!(
            d["spec"]["strategy"]["type"].as_str(),
            Some("RollingUpdate"),
            "deliver rolls, one pod at a time"
        );
        assert_eq!(
            d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
            Some(0)
        );
    }
    for d in find("Deployment", "mailpipe-") {
        let pod = &d["spec"]["template"];
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"].as_str(),
            Some("true")
        );
        assert_eq!(
            pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true)
        );
    }
    let scaled = find("ScaledObject", "mailpipe-render");
    assert_eq!(
        scaled[0]["spec"]["triggers"][0]["metadata"]["queueName"].as_str(),
        Some("mailpipe.render")
    );
    // The ConfigMap holds a configuration the binaries accept: TOML, with no inline secret.
    let cm = find("ConfigMap", "mailpipe");
    let toml_text = cm[0]["data"]["mailpipe.toml"]
        .as_str()
        .expect("mailpipe.toml key");
    let parsed: toml::Table = toml_text
        .parse()
        .expect("the ConfigMap's mailpipe.toml is TOML");
    for section in ["rabbitmq", "ingest", "render", "deliver"] {
        assert!(parsed.contains_key(section), "ConfigMap lacks [{section}]");
    }
    for secret in find("Secret", "mailpipe") {
        for (_, v) in secret["stringData"].as_mapping().expect("stringData") {
            assert!(
                v.as_str().is_some_and(|s| s.contains("PLACEHOLDER")),
                "the example Secret holds only PLACEHOLDER values"
            );
        }
    }
}

#[test]
fn dockerfile_builds_like_the_readme_and_runs_unprivileged() {
    let docker = read("deploy/Dockerfile");
    let build = docker
        .lines()
        .map(|l| l.trim().trim_end_matches('\\').trim())
        .find(|l| l.starts_with("cargo build"))
        .expect("the Dockerfile runs cargo build");
    assert!(
        build.starts_with("cargo build --release --locked"),
        "{build}"
    );
    assert!(
        read("README.md").contains(build),
        "README.md does not give the Dockerfile's build command `{build}`"
    );
    assert!(
        docker.contains("FROM rust:1.95-bookworm AS builder"),
        "builder image"
    );
    assert!(
        docker.contains("FROM debian:bookworm-slim"),
        "runtime image"
    );
    assert!(
        docker.contains("ca-certificates"),
        "runtime needs CA certificates"
    );
    for bin in [
        "mailpipe-ingest",
        "mailpipe-render",
        "mailpipe-deliver",
        "mailpipe-sim",
    ] {
        assert!(
            docker.contains(&format!("target/release/{bin}")),
            "the image lacks {bin}"
        );
    }
    let user = docker
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.contains("root") && !user.ends_with(" 0") && !user.contains(" 0:"),
        "runs as root: {user}"
    );
    for l in docker
        .lines()
        .filter(|l| l.starts_with("ENV ") || l.starts_with("ARG "))
    {
        let up = l.to_ascii_uppercase();
        assert!(
            !["PASSWORD", "SECRET", "TOKEN"]
                .iter()
                .any(|s| up.contains(s)),
            "secret-looking build setting: {l}"
        );
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim_end_matches('/') == "target"),
        ".dockerignore must leave target/ out"
    );
}

#[test]
fn compose_runs_the_whole_stack_from_files_that_exist() {
    let path = root().join("deploy/compose/compose.yaml");
    let compose = &yaml_docs(&path)[0];
    let services = compose["services"].as_mapping().expect("services");
    for s in [
        "rabbitmq",
        "sim",
        "ingest",
        "render",
        "deliver",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "compose lacks service {s}");
    }
    let text = read("deploy/compose/compose.yaml");
    for line in text.lines() {
        let l = line.trim().trim_start_matches("- ");
        if l.starts_with("./") || l.starts_with("../") {
            let src = l.split(':').next().unwrap_or_default();
            let p = root().join("deploy/compose").join(src);
            assert!(
                p.exists(),
                "compose mounts {src}, which does not exist ({})",
                p.display()
            );
        }
    }
    // No secret values in the file: they come from .env.
    assert!(
        !text.contains("PLACEHOLDER") && text.contains("${MAILPIPE_INGEST_TOKEN:?"),
        "secrets come from the environment"
    );
    let cfg: toml::Table = read("deploy/compose/mailpipe.toml")
        .parse()
        .expect("compose's mailpipe.toml is TOML");
    assert!(cfg.contains_key("deliver"));
    let rabbit = read("deploy/compose/rabbitmq/rabbitmq.conf");
    assert!(rabbit.contains("prometheus.return_per_object_metrics = true"));
}

#[test]
fn prometheus_scrapes_every_binary_and_the_broker() {
    let cfg = &yaml_docs(&root().join("deploy/prometheus/prometheus.yml"))[0];
    let targets: Vec<String> = cfg["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|j| {
            j["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|s| s["targets"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    for t in [
        "127.0.0.1:8080",
        "127.0.0.1:9102",
        "127.0.0.1:9103",
        "127.0.0.1:15692",
    ] {
        assert!(
            targets.iter().any(|x| x == t),
            "no scrape target {t} in {targets:?}"
        );
    }
    assert!(
        !files_under(&root().join("deploy/prometheus/tests"), &["yml", "yaml"]).is_empty(),
        "rule unit tests"
    );
}

#[test]
fn systemd_units_are_hardened_and_read_secrets_from_an_environment_file() {
    for bin in ["mailpipe-ingest", "mailpipe-render", "mailpipe-deliver"] {
        let unit = read(&format!("deploy/systemd/{bin}.service"));
        for key in [
            "ExecStart=/usr/local/bin/",
            "EnvironmentFile=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
        ] {
            assert!(unit.contains(key), "{bin}.service lacks {key}");
        }
        assert!(
            unit.contains(&format!("ExecStart=/usr/local/bin/{bin} ")),
            "{bin}.service runs another binary"
        );
    }
}

/// Every Deployment (file, document) under deploy/k8s.
fn k8s_deployments() -> Vec<(PathBuf, Yaml)> {
    files_under(&root().join("deploy/k8s"), &["yml", "yaml"])
        .into_iter()
        .flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d)))
        .filter(|(_, d)| d["kind"].as_str() == Some("Deployment"))
        .collect()
}

/// A file mode as Kubernetes reads it: YAML 1.1, where `0440` is octal (serde_yaml reads
/// YAML 1.2, so a leading-zero literal may come back as the decimal 440 or a string).
fn k8s_mode(v: &Yaml) -> Option<u32> {
    let text = match v {
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => s.clone(),
        _ => return None,
    };
    match text.strip_prefix('0').filter(|r| !r.is_empty()) {
        Some(octal) => u32::from_str_radix(octal.trim_start_matches('o'), 8).ok(),
        None => text.parse().ok(),
    }
}

#[test]
fn every_secret_volume_is_readable_by_the_pods_user() {
    let deployments = k8s_deployments();
    assert!(deployments.len() >= 3, "the three stages' Deployments");
    let mut checked = 0;
    for (file, d) in deployments {
        let pod = &d["spec"]["template"]["spec"];
        let psc = &pod["securityContext"];
        let fs_group = psc["fsGroup"].as_u64();
        for c in pod["containers"].as_sequence().expect("containers") {
            let csc = &c["securityContext"];
            let uid = csc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64());
            let gid = csc["runAsGroup"].as_u64().or(psc["runAsGroup"].as_u64());
            let mut groups: Vec<u64> = gid.into_iter().chain(fs_group).collect();
            if let Some(extra) = psc["supplementalGroups"].as_sequence() {
                groups.extend(extra.iter().filter_map(Yaml::as_u64));
            }
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let vol = pod["volumes"]
                    .as_sequence()
                    .expect("volumes")
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("{}: mount of an undefined volume", file.display()));
                let secret = &vol["secret"];
                if secret.is_null() {
                    continue;
                }
                // Secret files are owned by root, group fsGroup when set (else root).
                let file_group = fs_group.unwrap_or(0);
                let default_mode = if secret["defaultMode"].is_null() {
                    0o644
                } else {
                    k8s_mode(&secret["defaultMode"]).expect("defaultMode is a mode")
                };
                let modes: Vec<u32> = match secret["items"].as_sequence() {
                    Some(items) => items
                        .iter()
                        .map(|i| k8s_mode(&i["mode"]).unwrap_or(default_mode))
                        .collect(),
                    None => vec![default_mode],
                };
                for mode in modes {
                    let readable = match uid {
                        Some(0) | None => mode & 0o400 != 0,
                        Some(_) if groups.contains(&file_group) => mode & 0o040 != 0,
                        Some(_) => mode & 0o004 != 0,
                    };
                    assert!(
                        readable,
                        "{}: container {} (uid {uid:?}, groups {groups:?}) cannot read secret volume {} \
                         (owner root, group {file_group}, mode {mode:o})",
                        file.display(),
                        c["name"].as_str().unwrap_or("?"),
                        vol["name"].as_str().unwrap_or("?"),
                    );
                    assert_eq!(mode & 0o007, 0, "secret files must not be world-readable");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 3, "every stage mounts its secrets");
}

#[test]
fn every_deployment_has_a_startup_probe_before_its_liveness_probe() {
    for (file, d) in k8s_deployments() {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers")
        {
            let startup = &c["startupProbe"]["httpGet"];
            assert_eq!(
                startup["path"].as_str(),
                Some("/healthz"),
                "{}: {} needs a startupProbe on /healthz",
                file.display(),
                c["name"].as_str().unwrap_or("?")
            );
            assert!(
                c["livenessProbe"]["httpGet"]["path"].as_str() == Some("/healthz")
                    && c["readinessProbe"]["httpGet"]["path"].as_str() == Some("/readyz"),
                "{}: liveness on /healthz, readiness on /readyz",
                file.display()
            );
            let budget = c["startupProbe"]["periodSeconds"].as_u64().unwrap_or(10)
                * c["startupProbe"]["failureThreshold"].as_u64().unwrap_or(3);
            assert!(
                budget >= 60,
                "{}: the startup probe allows only {budget}s",
                file.display()
            );
        }
    }
}

/// All documents of deploy/k8s, by kind and name.
fn k8s_objects() -> Vec<(String, String, Yaml)> {
    files_under(&root().join("deploy/k8s"), &["yml", "yaml"])
        .into_iter()
        .flat_map(|f| yaml_docs(&f))
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d,
            )
        })
        .collect()
}

#[test]
fn no_disruption_budget_blocks_a_node_drain() {
    let objects = k8s_objects();
    for (_, name, pdb) in objects
        .iter()
        .filter(|(k, _, _)| k == "PodDisruptionBudget")
    {
        let Some(min) = pdb["spec"]["minAvailable"].as_u64() else {
            assert!(
                pdb["spec"]["maxUnavailable"]
                    .as_u64()
                    .is_some_and(|n| n >= 1),
                "{name}: maxUnavailable must let one pod go"
            );
            continue;
        };
        // The fewest replicas the target can run: a ScaledObject's minReplicaCount, else replicas.
        let deployment = objects
            .iter()
            .find(|(k, n, _)| k == "Deployment" && n == name)
            .unwrap_or_else(|| panic!("PDB {name} has no Deployment of its name"));
        let fewest = objects
            .iter()
            .find(|(k, _, o)| {
                k == "ScaledObject" && o["spec"]["scaleTargetRef"]["name"].as_str() == Some(name)
            })
            .map(|(_, _, o)| o["spec"]["minReplicaCount"].as_u64().unwrap_or(0))
            .unwrap_or_else(|| deployment.2["spec"]["replicas"].as_u64().unwrap_or(1));
        assert!(
            min < fewest,
            "{name}: minAvailable {min} with as few as {fewest} replicas blocks every drain"
        );
    }
}

#[test]
fn render_reads_attachments_from_the_volume_its_config_names() {
    let objects = k8s_objects();
    let cm = &objects
        .iter()
        .find(|(k, _, _)| k == "ConfigMap")
        .expect("ConfigMap")
        .2;
    let cfg: toml::Table = cm["data"]["mailpipe.toml"]
        .as_str()
        .expect("mailpipe.toml")
        .parse()
        .expect("TOML");
    let root_dir = cfg["render"]["attachments_root"]
        .as_str()
        .expect("render.attachments_root is set");
    let render = &objects
        .iter()
        .find(|(k, n, _)| k == "Deployment" && n == "mailpipe-render")
        .expect("render Deployment")
        .2;
    let pod = &render["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(root_dir))
        .unwrap_or_else(|| panic!("render mounts nothing at {root_dir}"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("a persistentVolumeClaim");
    assert!(
        objects
            .iter()
            .any(|(k, n, _)| k == "PersistentVolumeClaim" && n == claim),
        "no PersistentVolumeClaim {claim}"
    );
    let kustomization = read("deploy/k8s/kustomization.yaml");
    for f in files_under(&root().join("deploy/k8s"), &["yaml"]) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if !["kustomization.yaml", "secret.example.yaml"].contains(&name.as_str()) {
            assert!(
                kustomization.contains(&format!("- {name}")),
                "kustomization.yaml does not apply {name}"
            );
        }
    }
}

#[test]
fn the_prometheus_rule_holds_exactly_the_alert_rules() {
    let rule = k8s_objects()
        .into_iter()
        .find(|(k, _, _)| k == "PrometheusRule")
        .expect("a PrometheusRule in deploy/k8s")
        .2;
    let alerts = &yaml_docs(&root().join("deploy/prometheus/alerts.yml"))[0];
    assert!(
        rule["spec"]["groups"] == alerts["groups"],
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: \
         regenerate it with `deploy/prometheus/prometheusrule.sh > deploy/k8s/prometheusrule.yaml`"
    );
    assert_eq!(
        rule["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(),
        Some("mailpipe")
    );
}

#[test]
fn every_alert_has_an_absolute_runbook_and_rule_tests_that_fire_and_stay_silent() {
    const RUNBOOKS: &str = "https://github.com/mailpipe/mailpipe/blob/main/docs/operations.md#";
    let rules = &yaml_docs(&root().join("deploy/prometheus/alerts.yml"))[0];
    let ops = read("docs/operations.md").to_ascii_lowercase();
    let tests = &yaml_docs(&root().join("deploy/prometheus/tests/alerts_test.yml"))[0];
    // (alertname, expects alerts) of every alert_rule_test case.
    let cases: Vec<(String, bool)> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| {
            t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| {
            (
                c["alertname"].as_str().expect("alertname").to_owned(),
                c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()),
            )
        })
        .collect();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no runbook_url"));
            let anchor = url
                .strip_prefix(RUNBOOKS)
                .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not under {RUNBOOKS}"));
            assert_eq!(anchor, name.to_ascii_lowercase(), "{name}: anchor");
            assert!(
                ops.contains(&format!("### {anchor}\n")),
                "{name}: no `### {name}` in docs/operations.md"
            );
            for fires in [true, false] {
                assert!(
                    cases.iter().any(|(n, f)| n == name && *f == fires),
                    "{name} has no promtool test where it {}",
                    if fires { "fires" } else { "stays silent" }
                );
            }
        }
    }
    assert!(alerts >= 10, "found only {alerts} alerts");
}
