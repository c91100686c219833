//! The RabbitMQ layer every stage uses: a reconnecting `Broker`, the idempotent
//! `Topology`, a `Publisher` whose every publish is confirmed (or an error), and a
//! consumer loop with bounded prefetch that survives broker restarts.

mod broker;
mod consumer;
mod headers;
mod publisher;
mod topology;

pub use broker::{Broker, BrokerError, ConnectOptions, WeakBroker};
pub use consumer::{ConsumerSpec, consume};
pub use headers::{
    DEAD_REASON_HEADER, DEAD_STAGE_HEADER, death_reason, death_time, header_i64, header_str,
    persistent_properties, set_header,
};
pub use publisher::{Outgoing, PendingConfirm, PublishError, Publisher};
pub use topology::{Stage, Topology};

pub use lapin::BasicProperties;
pub use lapin::message::Delivery;
pub use lapin::types::{AMQPValue, FieldTable};
