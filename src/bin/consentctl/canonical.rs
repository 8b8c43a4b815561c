//! `--json`: responses as the canonical protobuf JSON mapping, the spelling
//! grpcurl prints (lowerCamelCase fields, full enum names like
//! `OUTCOME_GRANTED`, 64-bit integers as strings, default values left out),
//! read through the same descriptor set the daemon serves for reflection.

use std::sync::OnceLock;

use anyhow::{Context as _, Result};
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;

fn pool() -> Result<&'static DescriptorPool> {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    if let Some(pool) = POOL.get() {
        return Ok(pool);
    }
    let pool = DescriptorPool::decode(consentd::pb::FILE_DESCRIPTOR_SET)
        .context("internal: decoding the built-in descriptor set")?;
    Ok(POOL.get_or_init(|| pool))
}

/// `msg`, a `consent.v1.<name>`, in the canonical JSON mapping.
pub fn json<M: prost::Message>(msg: &M, name: &str) -> Result<Value> {
    let full = format!("consent.v1.{name}");
    let descriptor = pool()?
        .get_message_by_name(&full)
        .with_context(|| format!("internal: no message {full} in the descriptor set"))?;
    let dynamic = DynamicMessage::decode(descriptor, msg.encode_to_vec().as_slice())
        .with_context(|| format!("internal: re-reading a {full}"))?;
    serde_json::to_value(&dynamic).with_context(|| format!("internal: {full} as JSON"))
}
