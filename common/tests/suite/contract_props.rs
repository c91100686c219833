//! Property tests for every parser of the contract that faces input: a job as clients send
//! it, the mailbox shape inside it, ids and template names, attachment paths, the rendered
//! message's metadata header and delivery events. Each parser must refuse cleanly (never
//! panic) on any input, and whatever it accepts must be safe to carry on.

#![allow(clippy::unwrap_used)]

use std::path::{Component, Path};

use mailpipe_common::contract::{AttachmentPath, DeliveryEvent, EventKind, Job, RenderedMeta};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId, Mailbox, TemplateName};
use proptest::prelude::*;
use serde_json::json;

fn address() -> impl Strategy<Value = String> {
    ("[a-z0-9]{1,12}", "[a-z]{1,10}", "(com|org|example|de)")
        .prop_map(|(l, d, t)| format!("{l}@{d}.{t}"))
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._:-]{0,40}"
}

/// A JSON value of bounded depth, for the job's free-form `data`.
fn data_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A job as a client could validly write it, as JSON.
fn valid_job() -> impl Strategy<Value = serde_json::Value> {
    (
        id(),
        proptest::option::of(id()),
        "[a-z][a-z0-9_-]{0,20}",
        prop::collection::vec(address(), 1..4),
        prop::collection::vec(address(), 0..3),
        proptest::option::of(("[A-Za-z ÄÖüé]{1,30}", address())),
        prop::collection::btree_map("[a-z_]{1,8}", data_value(), 0..5),
    )
        .prop_map(|(id, batch, template, to, bcc, from, data)| {
            let mut job = json!({ "id": id, "template": template, "to": to, "data": data });
            if let Some(b) = batch {
                job["batch"] = json!(b);
            }
            if !bcc.is_empty() {
                job["bcc"] = json!(bcc);
            }
            if let Some((name, address)) = from {
                job["from"] = json!({ "name": name, "address": address });
            }
            job
        })
}

fn header_safe(s: &str) -> bool {
    !s.chars().any(|c| c.is_control())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any bytes at all: a clean error or a job, never a panic.
    #[test]
    fn job_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Job::from_json(&bytes);
        let _ = Job::from_queue(&bytes);
    }

    /// Valid jobs parse, and what ingest publishes reads back identically in render.
    #[test]
    fn valid_jobs_parse_and_round_trip_through_the_queue(job in valid_job()) {
        let bytes = serde_json::to_vec(&job).unwrap();
        let parsed = Job::from_json(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = Job::from_queue(&serde_json::to_vec(&parsed).unwrap()).unwrap();
        prop_assert_eq!(back, parsed);
    }

    /// Changing one field of a valid job to something of the wrong shape is refused with
    /// an error naming that field (or the job when the field is unknown).
    #[test]
    fn a_wrong_field_is_named(job in valid_job(), field in prop::sample::select(vec!["id", "template", "to", "data", "batch", "group", "colour"])) {
        let mut job = job;
        job[field] = json!([{"x": 1}]);
        let err = Job::from_json(&serde_json::to_vec(&job).unwrap()).unwrap_err();
        if field == "colour" {
            prop_assert!(err.reason.contains("colour"), "{}", err);
        } else {
            prop_assert!(err.field.starts_with(field), "{} for {}", err, field);
        }
    }

    /// Whatever a job's strings hold, an accepted job carries no control character in any
    /// value that becomes a header or an SMTP command.
    #[test]
    fn accepted_jobs_are_header_safe(job in valid_job(), name in "\\PC{0,40}", ctl in prop::char::range('\u{0}', '\u{1f}'), at in 0usize..40) {
        let mut job = job;
        let mut poisoned: String = name.clone();
        let at = at.min(poisoned.chars().count());
        let byte = poisoned.char_indices().nth(at).map(|(i, _)| i).unwrap_or(poisoned.len());
        poisoned.insert(byte, ctl);
        job["to"] = json!([{ "name": poisoned, "address": "a@example.com" }]);
        let parsed = Job::from_json(&serde_json::to_vec(&job).unwrap());
        // A leading or trailing control character that is whitespace is trimmed away;
        // anything else is refused. Either way nothing unsafe is kept.
        if let Ok(j) = parsed {
            for m in j.to.iter().chain(&j.cc).chain(&j.bcc).chain(j.from.iter()).chain(j.reply_to.iter()) {
                prop_assert!(m.name.as_deref().is_none_or(header_safe));
                prop_assert!(header_safe(m.address.as_str()));
            }
        }
    }

    /// The mailbox shape: a bare string or `{name, address}`; any other object key is refused
    /// (the OpenAPI says `additionalProperties: false`), long or multi-line names too.
    #[test]
    fn mailbox_deserializer(addr in address(), name in "\\PC{0,250}", key in "[a-z]{1,8}") {
        let bare: Mailbox = serde_json::from_value(json!(addr)).unwrap();
        prop_assert_eq!(bare.address.as_str(), addr.as_str());
        match serde_json::from_value::<Mailbox>(json!({ "name": name, "address": addr })) {
            Ok(m) => {
                let kept = m.name.unwrap_or_default();
                prop_assert!(kept.chars().count() <= 200);
                prop_assert!(header_safe(&kept));
                prop_assert_eq!(kept.as_str(), name.trim());
            }
            Err(_) => prop_assert!(name.trim().chars().count() > 200 || !header_safe(name.trim())),
        }
        if key != "name" && key != "address" {
            let with_extra = json!({ "address": addr, key.clone(): "x" });
            prop_assert!(serde_json::from_value::<Mailbox>(with_extra).is_err(), "unknown key {} accepted", key);
        }
    }

    /// Ids and template names: accepted exactly when short enough and made of the allowed
    /// characters; what is accepted prints back to itself.
    #[test]
    fn ids_and_template_names(input in "\\PC{0,140}") {
        let allowed = |extra: &[char], max: usize| {
            !input.is_empty() && input.len() <= max
                && input.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
        };
        match JobId::parse(&input) {
            Ok(id) => {
                prop_assert!(allowed(&['.', '_', '-', ':'], JobId::MAX_LEN));
                prop_assert_eq!(JobId::parse(&id.to_string()).unwrap(), id);
            }
            Err(_) => prop_assert!(!allowed(&['.', '_', '-', ':'], JobId::MAX_LEN)),
        }
        if let Ok(b) = BatchId::parse(&input) {
            prop_assert!(b.as_str().len() <= BatchId::MAX_LEN);
            prop_assert!(header_safe(b.as_str()) && !b.as_str().contains('/'));
        }
        if let Ok(t) = TemplateName::parse(&input) {
            // A template name becomes a directory name under the templates root.
            prop_assert!(!t.as_str().contains('/') && !t.as_str().contains('\\'));
            prop_assert!(t.as_str() != "." && t.as_str() != "..");
            prop_assert!(t.as_str().len() <= TemplateName::MAX_LEN);
        }
    }

    /// Whatever passes `AttachmentPath::parse`, joined to a root, stays inside it.
    #[test]
    fn attachment_paths_stay_inside_the_root(parts in prop::collection::vec(prop::sample::select(vec!["a", "b.pdf", "..", ".", "", "/", "\\", "C:", "x\u{0}", "~", "%2e%2e", "\u{202e}"]), 1..8)) {
        let input = parts.join("/");
        if let Ok(p) = AttachmentPath::parse(&input) {
            let joined = Path::new("/srv/attachments").join(p.as_str());
            let mut depth = 0i32;
            for c in joined.strip_prefix("/srv/attachments").unwrap().components() {
                match c {
                    Component::Normal(_) => depth += 1,
                    Component::CurDir => {}
                    Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                        return Err(TestCaseError::fail(format!("{input:?} escapes the root")));
                    }
                }
            }
            prop_assert!(depth >= 1);
            prop_assert!(!p.as_str().chars().any(char::is_control));
        }
    }

    /// The rendered message's metadata header: any text is refused cleanly; what render
    /// writes, deliver reads back identically.
    #[test]
    fn rendered_meta_header(text in "\\PC{0,200}", job_id in id(), rcpts in prop::collection::vec(address(), 1..5), attempt in 0u32..100) {
        let _ = RenderedMeta::from_header_value(&text);
        let meta = RenderedMeta {
            v: 1,
            job_id: JobId::parse(&job_id).unwrap(),
            batch: None,
            from: Mailbox::address_only(EmailAddress::parse("billing@example.com").unwrap()),
            has_reply_to: attempt % 2 == 0,
            recipients: rcpts.iter().map(|r| EmailAddress::parse(r).unwrap()).collect(),
            group: None,
            message_id: format!("<{job_id}@mailpipe>"),
            attempt,
            rendered_at: chrono::Utc::now(),
            not_before: None,
            not_after: None,
            lane: mailpipe_common::contract::Lane::Bulk,
            bulk_queue: 0,
        };
        let back = RenderedMeta::from_header_value(&meta.to_header_value()).unwrap();
        prop_assert_eq!(back, meta);
    }

    /// Delivery events from the stream: any bytes refused cleanly; events round-trip; a
    /// newer contract version is refused rather than misread.
    #[test]
    fn delivery_events(bytes in prop::collection::vec(any::<u8>(), 0..300), job_id in id(), kind in prop::sample::select(vec![EventKind::Accepted, EventKind::Rendered, EventKind::Delivered, EventKind::Retrying, EventKind::Failed]), v in 2u16..1000) {
        let _ = DeliveryEvent::from_json(&bytes);
        let e = DeliveryEvent::new(JobId::parse(&job_id).unwrap(), None, kind);
        prop_assert_eq!(DeliveryEvent::from_json(&e.to_json()).unwrap(), e.clone());
        let mut newer: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        newer["v"] = json!(v);
        prop_assert!(DeliveryEvent::from_json(&serde_json::to_vec(&newer).unwrap()).is_err());
    }
}
