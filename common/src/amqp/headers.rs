//! AMQP header helpers. String values are always `LongString`: RabbitMQ refuses
//! `ShortString` in some places (queue arguments) and readers then need only one case.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Why a message is in dead letters, in words (set by whoever dead-lettered it on purpose).
pub const DEAD_REASON_HEADER: &str = "mailpipe-dead-reason";
/// The stage that dead-lettered it (`render`, `deliver`).
pub const DEAD_STAGE_HEADER: &str = "mailpipe-dead-stage";

pub fn set_header(table: &mut FieldTable, key: &str, value: impl Into<String>) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value.into())),
    );
}

pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    as_string(props.headers().as_ref()?.inner().get(key)?)
}

pub fn header_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// Persistent (delivery mode 2) with a content type and the given headers: everything
/// mailpipe publishes must survive a broker restart.
pub fn persistent_properties(content_type: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from(content_type))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers)
}

/// Why the broker dead-lettered a message (`delivery_limit`, `rejected`, `expired`...),
/// from the newest `x-death` entry.
pub fn death_reason(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    as_string(first.inner().get("reason")?)
}

/// When the broker dead-lettered a message (the newest `x-death` entry's `time`, whole
/// seconds): the same dead letter read twice has the same time.
pub fn death_time(props: &BasicProperties) -> Option<chrono::DateTime<chrono::Utc>> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let AMQPValue::Timestamp(secs) = first.inner().get("time")? else {
        return None;
    };
    chrono::DateTime::from_timestamp(i64::try_from(*secs).ok()?, 0)
}

fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
