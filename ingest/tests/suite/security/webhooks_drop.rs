//! `mailpipe-ingest webhooks drop`: the examples its `--help` shows, run as shown, end
//! exactly the pending deliveries they name `dropped` with the reason, and print how many.

use std::time::Duration;

use mailpipe_common::store::Store;
use tokio_util::sync::CancellationToken;

use super::bounded;
use super::delivery::event;

/// A pending callback delivery of a fresh event of `job`, to `url`.
async fn pending(store: &Store, batch: &str, job: &str, url: &str) {
    event(store, batch, job, url).await;
    sqlx::query(
        "INSERT INTO webhook_deliveries (event_id, endpoint, url, expires_at)
         SELECT id, 'callback', $2, now() + interval '1 day' FROM webhook_events WHERE job_id = $1",
    )
    .bind(job)
    .bind(url)
    .execute(store.pool())
    .await
    .unwrap();
}

/// Each job's delivery: (state, last_error).
async fn states(store: &Store) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT e.job_id, d.state, d.last_error FROM webhook_deliveries d
         JOIN webhook_events e ON e.id = d.event_id ORDER BY e.job_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// Splits a shell line into words (double quotes group; nothing else is special here).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

fn run(args: Vec<String>) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_help_examples_drop_what_they_name_and_print_how_many() {
    bounded("webhooks drop", Duration::from_secs(90), async {
        let (store, database) =
            mailpipe_common::testkit::test_store("sec-wh-drop", CancellationToken::new()).await;
        pending(&store, "b-1", "j1-erp", "https://erp.example.com/hook").await;
        pending(
            &store,
            "b-2",
            "j2-erp",
            "https://ERP.Example.com:8443/other?x=1",
        )
        .await;
        pending(&store, "nov-2026", "j3-nov", "https://crm.example.net/hook").await;
        pending(&store, "b-4", "j4-other", "https://other.example.org/hook").await;
        pending(&store, "b-5", "j5-done", "https://erp.example.com/hook").await;
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'delivered' WHERE event_id IN
             (SELECT id FROM webhook_events WHERE job_id = 'j5-done')",
        )
        .execute(store.pool())
        .await
        .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mailpipe.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = {:?}\nschema = {:?}\n",
                database.url, database.schema
            ),
        )
        .unwrap();
        let (code, help, _) = tokio::task::spawn_blocking(|| {
            run(vec!["webhooks".into(), "drop".into(), "--help".into()])
        })
        .await
        .unwrap();
        assert_eq!(code, 0);
        let examples: Vec<Vec<String>> = help
            .lines()
            .filter(|l| l.trim_start().starts_with("mailpipe-ingest "))
            .map(|l| {
                words(l)
                    .into_iter()
                    .skip(1)
                    .map(|w| {
                        if w == "mailpipe.toml" {
                            config.display().to_string()
                        } else {
                            w
                        }
                    })
                    .collect()
            })
            .collect();
        assert_eq!(examples.len(), 3, "{help}");

        // 1: by host (any case, any port); the delivered one is left alone.
        let expect = [
            (2, vec!["j1-erp", "j2-erp"], "retired"),
            (1, vec!["j3-nov"], "sent by mistake"),
            (1, vec!["j4-other"], "incident 42"),
        ];
        for (args, (n, jobs, reason)) in examples.into_iter().zip(expect) {
            let shown = args.join(" ");
            let (code, out, err) = tokio::task::spawn_blocking(move || run(args))
                .await
                .unwrap();
            assert_eq!(code, 0, "{shown}: {err}");
            assert!(
                out.contains(&format!("{n} pending webhook deliveries dropped")),
                "{shown}: {out}"
            );
            for (job, state, error) in states(&store).await {
                if jobs.contains(&job.as_str()) {
                    assert_eq!(state, "dropped", "{shown}: {job}");
                    assert!(error.unwrap_or_default().contains(reason), "{shown}: {job}");
                }
            }
        }
        let left: Vec<(String, String)> = states(&store)
            .await
            .into_iter()
            .map(|(j, s, _)| (j, s))
            .collect();
        let want = [
            ("j1-erp", "dropped"),
            ("j2-erp", "dropped"),
            ("j3-nov", "dropped"),
            ("j4-other", "dropped"),
            ("j5-done", "delivered"),
        ]
        .map(|(j, s)| (j.to_owned(), s.to_owned()));
        assert_eq!(left, want);

        // A reason is required, and must say something.
        let args: Vec<String> = [
            "--config",
            config.to_str().unwrap(),
            "webhooks",
            "drop",
            "--all",
            "--reason",
            " ",
        ]
        .map(str::to_owned)
        .to_vec();
        let (code, _, err) = tokio::task::spawn_blocking(move || run(args))
            .await
            .unwrap();
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--reason"), "{err}");
        store.close().await;
    })
    .await;
}
