//! The operator's console in a real browser: headless Chromium (Debian's package) driven
//! through chromedriver, against the real binaries and the simulator. Log in with a
//! token; the batch list shows a running batch whose progress advances (the page's own
//! polling, no reload); pausing from the page stops sends (counted on the simulator);
//! the pool page shows the mailboxes, a blocked tenant's held with the reason; a page
//! without a session goes to the login form;
//! a POST without the CSRF token, or from another site, changes nothing. Screenshots of
//! each page: `MAILPIPE_CONSOLE_SCREENSHOTS=docs` puts them in docs/console/.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions, workspace_root};

/// chromedriver in a process group of its own, with the Chromium it starts: the whole
/// group is killed and chromedriver reaped however the test ends (a panic included).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver runs (apt-get install chromium chromium-driver; deploy/local/ensure-chromium.sh)");
    let driver = Driver(child);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--disable-crash-reporter", "--disable-breakpad",
                     "--window-size=1280,900"]
        }),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util_connector();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no WebDriver session within 30 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn hyper_util_connector() -> HttpConnector {
    HttpConnector::new()
}

/// Where screenshots go: `docs/console/` when `MAILPIPE_CONSOLE_SCREENSHOTS=docs` (to
/// refresh the documentation's), else the test's scratch directory (a test run leaves the
/// source tree alone).
fn screenshot_dir() -> PathBuf {
    let dir = match std::env::var("MAILPIPE_CONSOLE_SCREENSHOTS").as_deref() {
        Ok("docs") => workspace_root().join("docs/console"),
        _ => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

async fn sent(stack: &Stack, batch: &str) -> usize {
    stack
        .sent_jobs()
        .await
        .iter()
        .filter(|(b, _)| b == batch)
        .count()
}

/// The batch row's "at an end" count, as the page shows it now.
async fn shown_done(c: &Client, batch: &str) -> u64 {
    shown_text(c, Locator::Css(&format!("tr[data-batch='{batch}'] .done")))
        .await
        .trim()
        .parse()
        .unwrap()
}

/// The text of an element of the page's live part, as shown now. The page swaps that
/// part in every 3 s: an element found just before a swap is stale by the time it is
/// read, so it is found again.
async fn shown_text(c: &Client, locator: Locator<'_>) -> String {
    for _ in 0..50 {
        match element(c, locator).await.text().await {
            Ok(text) => return text,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{locator:?}: {e}"),
        }
    }
    panic!("{locator:?} went stale 50 times in a row")
}

/// The element, once the page shows it (pages load after a click).
async fn element(c: &Client, locator: Locator<'_>) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(locator)
        .await
        .unwrap_or_else(|e| panic!("{locator:?} not shown within 20 s: {e}"))
}

/// Submits the login form with `token`.
async fn log_in(c: &Client, token: &str) {
    let form = element(c, Locator::Id("login")).await;
    fill(&form, "#token", token).await;
    element(c, Locator::Id("login-submit"))
        .await
        .click()
        .await
        .unwrap();
}

/// Types `text` into the field of `form` that `css` selects.
async fn fill(form: &fantoccini::elements::Element, css: &str, text: &str) {
    let field = form
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    field.send_keys(text).await.unwrap();
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_pauses_and_inspects_through_the_console() {
    tokio::time::timeout(Duration::from_secs(300), run())
        .await
        .expect("the console test finished within 300 s");
}

async fn run() {
    let opts = StackOptions {
        name: "console".into(),
        messages_per_window: 2,
        message_window_ms: 1_000,
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let (_driver, c) = browser().await;
    let base = stack.url(Binary::Ingest);
    let jsonl = write_batch(&stack.attachments_root(), "cb", 200, |_| 1).unwrap();
    assert_eq!(stack.post_batch("cb", jsonl, false).await.unwrap().0, 202);

    // No session: the login form.
    c.goto(&format!("{base}/console/batches")).await.unwrap();
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/login")
    );
    screenshot(&c, "login").await;
    log_in(&c, "wrong-token").await;
    element(&c, Locator::Id("login-error")).await;
    log_in(&c, &stack.token).await;

    // The running batch's progress advances on the page by itself.
    wait_until(
        "the batch shows on the list",
        Duration::from_secs(60),
        || async { c.find(Locator::Css("tr[data-batch='cb']")).await.is_ok() },
    )
    .await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/batches")
    );
    // The session cookie is out of scripts' reach and never sent cross-site; the token
    // appears nowhere in the page.
    let cookie = c.get_named_cookie("mailpipe_console").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true), "{cookie}");
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict"),
        "{cookie}"
    );
    assert_ne!(cookie.value(), stack.token);
    assert!(!c.source().await.unwrap().contains(&stack.token));
    let first = shown_done(&c, "cb").await;
    wait_until(
        "the progress advances without a reload",
        Duration::from_secs(60),
        || async { shown_done(&c, "cb").await > first },
    )
    .await;
    assert_eq!(
        shown_text(&c, Locator::Css("tr[data-batch='cb'] td:nth-child(2)")).await,
        "running"
    );
    screenshot(&c, "batches").await;

    // Pause from the batch page, through its confirmation. It draws the batch's progress
    // over time: a bar per minute with sends.
    c.goto(&format!("{base}/console/batches/cb")).await.unwrap();
    let bars = c
        .find_all(Locator::Css("#progress-chart rect"))
        .await
        .unwrap();
    assert!(!bars.is_empty(), "the batch page charts its progress");
    screenshot(&c, "batch").await;
    element(&c, Locator::Id("pause"))
        .await
        .click()
        .await
        .unwrap();
    element(&c, Locator::Id("confirm-pause"))
        .await
        .click()
        .await
        .unwrap();
    assert_eq!(shown_text(&c, Locator::Id("batch-state")).await, "paused");
    // Sends under way finish (no send of the batch is open on record); then the simulator
    // receives nothing more of it.
    let db = sqlx::PgPool::connect_with(stack.database.connect_options().unwrap())
        .await
        .unwrap();
    wait_until(
        "the sends under way at the pause end",
        Duration::from_secs(60),
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sends s JOIN jobs j ON j.id = s.job_id \
                 WHERE j.batch_id = 'cb' AND s.outcome IS NULL",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            open == 0
        },
    )
    .await;
    db.close().await;
    let at_pause = sent(&stack, "cb").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        sent(&stack, "cb").await,
        at_pause,
        "a paused batch sent more"
    );
    assert!(at_pause < 200, "paused mid-run");

    // Every page carries the strict policy (no inline script, no framing).
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    // Without the CSRF token a POST changes nothing, with the session cookie or without.
    let r = http
        .post(format!("{base}/console/batches/cb/resume"))
        .header("cookie", format!("mailpipe_console={}", cookie.value()))
        .form(&[("confirmed", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a POST without the CSRF token is refused");
    // A form on another site posting to the console: the browser sends no session (SameSite=Strict).
    let form = format!(
        "data:text/html,<form method=post action='{base}/console/batches/cb/resume'>\
         <input type=hidden name=confirmed value=yes><button id=go>go</button></form>"
    );
    c.goto(&form).await.unwrap();
    element(&c, Locator::Id("go")).await.click().await.unwrap();
    // The console answered the POST once the browser has left the data: page.
    wait_until(
        "the cross-site POST is answered",
        Duration::from_secs(30),
        || async {
            c.current_url()
                .await
                .is_ok_and(|u| u.as_str().starts_with(&base))
        },
    )
    .await;
    let status = stack.batch_status("cb").await.unwrap();
    assert_eq!(
        status["control"], "paused",
        "a cross-site POST changed nothing: {status}"
    );

    // The pool page lists every mailbox of the pool, and says which are held and why:
    // fabrikam's tenant is blocked (550 5.7.708), and a new batch meets it.
    assert!(stack.sim.set_tenant_blocked("fabrikam", true));
    let jsonl = write_batch(&stack.attachments_root(), "cb2", 20, |_| 1).unwrap();
    assert_eq!(stack.post_batch("cb2", jsonl, false).await.unwrap().0, 202);
    c.goto(&format!("{base}/console/pool")).await.unwrap();
    let rows = c
        .find_all(Locator::Css("#mailboxes tbody tr"))
        .await
        .unwrap();
    assert!(!rows.is_empty(), "the pool page shows the mailboxes");
    wait_until(
        "the pool page shows fabrikam's mailboxes held for the blocked tenant",
        Duration::from_secs(90),
        || async {
            shown_text(&c, Locator::Css("#mailboxes"))
                .await
                .contains("quarantined: tenant_blocked")
        },
    )
    .await;
    screenshot(&c, "pool").await;
    assert!(stack.sim.set_tenant_blocked("fabrikam", false));

    c.goto(&format!("{base}/console/decisions")).await.unwrap();
    element(&c, Locator::Css("h1")).await;
    screenshot(&c, "decisions").await;

    // Suppressions: add one through the form; it is listed.
    c.goto(&format!("{base}/console/suppressions"))
        .await
        .unwrap();
    let form = element(&c, Locator::Id("add-suppression")).await;
    fill(&form, "input[name=address]", "ann@example.com").await;
    fill(&form, "input[name=reason]", "asked to stop").await;
    form.find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        shown_text(&c, Locator::Id("suppressions"))
            .await
            .contains("ann@example.com")
    );
    screenshot(&c, "suppressions").await;

    c.close().await.unwrap();
    stack.shutdown().await.unwrap();
}
