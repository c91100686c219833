//! The Inbox reader against the simulator's Graph and a real database, one round at a time:
//! a round takes from both ends of the Inbox (what just arrived is read at once, whatever the
//! backlog, and the backlog still drains), moves everything it looked at out of the Inbox,
//! fetches each message once, and a message too large to fetch costs one fetch (one
//! recorded as such by an earlier round, none).
#![allow(clippy::unwrap_used)]

use mailpipe_common::domain::EmailAddress;
use mailpipe_common::store::Store;
use mailpipe_common::testkit::{test_store, within};
use mailpipe_deliver::feedback::inbox::{InboxReader, InboxRound};
use mailpipe_deliver::graph::GraphClient;
use mailpipe_sim::{FailedRecipient, RunningSim, auto_reply, large_message};
use tokio_util::sync::CancellationToken;

use crate::graph_client::{SENDER, client_for, settings_for, start_sim};

struct Reader {
    sim: RunningSim,
    graph: GraphClient,
    reader: InboxReader,
    store: Store,
    schema: String,
    _dir: tempfile::TempDir,
}

impl Reader {
    async fn start(name: &str, graph_settings: &str) -> Self {
        let sim = start_sim(0).await;
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_for(&sim, &dir, graph_settings);
        let graph = client_for(&sim, &dir, graph_settings);
        let (store, db) = test_store(name, CancellationToken::new()).await;
        Self {
            reader: InboxReader::new(&settings.graph),
            sim,
            graph,
            store,
            schema: db.schema,
            _dir: dir,
        }
    }

    async fn round(&mut self) -> InboxRound {
        self.reader
            .read(&self.graph, &self.store, &me())
            .await
            .unwrap()
    }

    /// Subjects of a folder's messages with how often each was fetched.
    fn folder(&self, name: &str) -> Vec<(String, u64)> {
        self.sim
            .folder(SENDER, name)
            .map(|f| {
                f.messages
                    .into_iter()
                    .map(|m| (m.subject.unwrap_or_default(), m.fetches))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn finish(self) {
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(self.store.pool())
            .await
            .unwrap();
        self.sim.shutdown().await;
    }
}

fn me() -> EmailAddress {
    EmailAddress::parse(SENDER).unwrap()
}

#[tokio::test]
async fn a_round_reads_the_newest_at_once_and_the_backlog_drains_each_message_fetched_once() {
    within(
        std::time::Duration::from_secs(120),
        "the Inbox rounds",
        async {
            let mut r = Reader::start("inbox_ends", "messages_per_round = 10").await;
            for n in 0..30 {
                let from = format!("customer{n}@fabrikam.example");
                r.sim.inject_inbox(SENDER, &auto_reply(&from, SENDER, n));
            }
            // A report behind the backlog (Exchange's own NDR about a message we never sent:
            // read, refused, set aside for a person).
            let original = format!(
                "From: {SENDER}\r\nTo: customer99@fabrikam.example\r\nSubject: Invoice\r\nMessage-ID: <not-ours@mailpipe.test>\r\n\r\nhi\r\n"
            );
            r.sim.file_tenant_ndr(
                SENDER,
                original.as_bytes(),
                &[FailedRecipient {
                    address: "customer99@fabrikam.example".into(),
                    status: "5.1.10".into(),
                    diagnostic: "550 5.1.10 RESOLVER.ADR.RecipientNotFound".into(),
                }],
            );

            let first = r.round().await;
            assert_eq!(
                (first.picked, first.reports, first.other, first.failed),
                (10, 1, 9, 0),
                "{first:?}"
            );
            assert_eq!(r.folder("mailpipe-untrusted").len(), 1, "the newest is read at once");
            assert_eq!(r.folder("inbox").len(), 21);
            // The oldest five went too: the backlog drains from its old end.
            let mut senders: Vec<String> = r
                .sim
                .folder(SENDER, "mailpipe-other")
                .unwrap()
                .messages
                .into_iter()
                .filter_map(|m| m.from)
                .collect();
            senders.sort();
            let mut expected: Vec<String> = [0, 1, 2, 3, 4, 26, 27, 28, 29]
                .iter()
                .map(|n| format!("customer{n}@fabrikam.example"))
                .collect();
            expected.sort();
            assert_eq!(senders, expected, "the five oldest and the newest");

            let mut rounds = 1;
            while !r.folder("inbox").is_empty() {
                let round = r.round().await;
                assert!(round.picked <= 10, "{round:?}");
                rounds += 1;
                assert!(rounds <= 4, "30 messages at 10 a round");
            }
            let other = r.folder("mailpipe-other");
            assert_eq!(other.len(), 30);
            assert!(other.iter().all(|(_, fetches)| *fetches == 1), "{other:?}");
            // Nothing left: a round on an empty Inbox picks nothing.
            assert_eq!(r.round().await, InboxRound::default());
            r.finish().await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_message_too_large_to_fetch_costs_one_fetch_and_a_recorded_one_none() {
    within(
        std::time::Duration::from_secs(120),
        "the oversized rounds",
        async {
            let mut r = Reader::start("inbox_large", "max_message_bytes = 65536").await;
            r.sim.inject_inbox(
                SENDER,
                &large_message("bob@fabrikam.example", SENDER, 200_000),
            );
            r.sim
                .inject_inbox(SENDER, &auto_reply("ann@fabrikam.example", SENDER, 1));
            let round = r.round().await;
            assert_eq!(
                (round.too_large, round.other, round.failed),
                (1, 1, 0),
                "the round goes on past it: {round:?}"
            );
            let other = r.folder("mailpipe-other");
            assert_eq!(other.len(), 2);
            let large = other
                .iter()
                .find(|(s, _)| s.contains("scan attached"))
                .unwrap();
            assert_eq!(large.1, 1, "one fetch");
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox_set_aside")
                .fetch_one(r.store.pool())
                .await
                .unwrap();
            assert_eq!(left, 0, "the record goes once the message is moved");

            // A message an earlier round found too large (its move failed): only moved.
            let id = r.sim.inject_inbox(
                SENDER,
                &large_message("carol@fabrikam.example", SENDER, 200_000),
            );
            r.store
                .set_aside(
                    &me(),
                    &id,
                    None,
                    "larger than deliver.graph.max_message_bytes",
                )
                .await
                .unwrap();
            let round = r.round().await;
            assert_eq!((round.picked, round.too_large, round.other), (1, 0, 0));
            assert!(r.folder("inbox").is_empty());
            let fetched: Vec<u64> = r
                .folder("mailpipe-other")
                .into_iter()
                .map(|(_, f)| f)
                .collect();
            assert_eq!(fetched, [1, 1, 0], "never fetched again");
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox_set_aside")
                .fetch_one(r.store.pool())
                .await
                .unwrap();
            assert_eq!(left, 0);
            r.finish().await;
        },
    )
    .await;
}
