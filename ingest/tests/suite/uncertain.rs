//! `mailpipe-ingest uncertain`: the operator's side of the `hold` policy. Sends of unknown
//! outcome are listed with what is needed to look them up (mailbox, Message-ID); `resend`
//! lets deliver send one again, `mark-sent` records it delivered so it never goes again.
//! The commands are the ones `--help` shows.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use mailpipe_common::contract::{DeliveryEvent, EventKind};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::store::Store;
use mailpipe_common::store::{Decision, JobState, SendRules, SendStart, UnsettledSend};
use mailpipe_common::testkit::{database_settings, drop_schema, ensure_test_database};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const JOBS: [&str; 2] = ["inv-2026-11-000123", "inv-2026-11-000124"];

/// A deliver process that died mid-send of both jobs; a new owner settled them uncertain.
async fn died_mid_send(store: &Store) {
    let (dead, heir) = (Uuid::new_v4(), Uuid::new_v4());
    let mailbox = "billing1@contoso.example";
    let ttl = Duration::from_secs(60);
    let token = store
        .acquire_lease(dead, mailbox, ttl)
        .await
        .unwrap()
        .unwrap();
    for job in JOBS {
        let mut e = DeliveryEvent::new(
            JobId::parse(job).unwrap(),
            Some(BatchId::parse("nov-2026").unwrap()),
            EventKind::Accepted,
        );
        e.message_id = Some(format!("<{job}@mailpipe.example>"));
        store.record_event(&e).await.unwrap();
        let opened = store
            .open_send(&SendStart {
                id: Uuid::now_v7(),
                mailbox: mailbox.into(),
                tenant: Some("contoso".into()),
                job_id: job.into(),
                message_id: format!("<{job}@mailpipe.example>"),
                owner: dead,
                token,
                batch: None,
                recipients: vec![
                    mailpipe_common::domain::EmailAddress::parse("x@fabrikam.example").unwrap(),
                ],
                external_recipients: 1,
                budget: Duration::from_secs(90),
                rules: SendRules::default(),
            })
            .await
            .unwrap();
        assert_eq!(opened, Decision::Written);
    }
    store
        .release_leases(dead, &[mailbox.to_owned()])
        .await
        .unwrap();
    let token = store
        .acquire_lease(heir, mailbox, ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.settle_orphans(mailbox, token).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncertain_sends_are_listed_and_an_operator_resends_one_and_marks_the_other_sent() {
    ensure_test_database().await;
    let database = database_settings("ing-uncertain");
    let store = Store::new(&database, CancellationToken::new()).unwrap();
    store.prepare(Some(Duration::from_secs(30))).await.unwrap();
    died_mid_send(&store).await;

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
    let ingest = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = ingest(&["uncertain", "list"]);
    assert_eq!(code, Some(0), "{err}");
    for job in JOBS {
        assert!(out.contains(job), "{out}");
        assert!(out.contains(&format!("<{job}@mailpipe.example>")), "{out}");
    }
    assert!(
        out.contains("billing1@contoso.example") && out.contains("nov-2026"),
        "{out}"
    );
    let (code, json, _) = ingest(&["uncertain", "list", "--json"]);
    assert_eq!(code, Some(0));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["job_id"], JOBS[0]);

    // As --help shows them.
    let (code, out, err) = ingest(&["uncertain", "resend", JOBS[0]]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("will be sent again"), "{out}");
    let (code, out, err) = ingest(&["uncertain", "mark-sent", JOBS[1]]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("never sent again"), "{out}");

    let check = |job: &str| {
        let store = store.clone();
        let job = JobId::parse(job).unwrap();
        async move { store.send_check(&job).await.unwrap() }
    };
    let resent = check(JOBS[0]).await;
    assert!(
        matches!(&resent.unsettled, Some(UnsettledSend::Uncertain { resolution: Some(r), .. }) if r == "resend"),
        "{resent:?}"
    );
    assert_eq!(check(JOBS[1]).await.state, Some(JobState::Delivered));

    // Decided once: nothing is waiting any more, and a second decision says so (exit 1).
    let (code, out, _) = ingest(&["uncertain", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("no uncertain sends"), "{out}");
    let (code, _, err) = ingest(&["uncertain", "mark-sent", JOBS[0], "no-such-job"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(JOBS[0]) && err.contains("no-such-job"),
        "{err}"
    );
    drop_schema(&store, &database.schema).await;
}
