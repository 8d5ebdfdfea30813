//! `sluice subscription skip`, `clear` and `reset` (issue 15): move a
//! subscription's cursor on every partition.

use anyhow::{bail, Context, Result};
use sluice_client::{Admin, SubscriptionReset, SubscriptionSkip};

/// Skips `count` messages (or with `None` the whole backlog) of
/// subscription `name` of `topic`, and prints each partition's result.
pub async fn skip(admin: &Admin, topic: &str, name: &str, count: Option<u64>) -> Result<()> {
    let skip = match count {
        Some(0) => bail!("--count 0 skips nothing; give at least 1"),
        Some(count) => SubscriptionSkip::Messages(count),
        None => SubscriptionSkip::All,
    };
    let answers = admin
        .skip_subscription(topic, name, skip)
        .await
        .with_context(|| format!("skipping messages of subscription {name:?} of {topic:?}"))?;
    println!("PARTITION  SKIPPED  ACKNOWLEDGED-BELOW  END");
    let mut total = 0u64;
    for (partition, answer) in answers {
        total = total.saturating_add(answer.skipped);
        println!(
            "{partition}  {}  {}  {}",
            answer.skipped, answer.mark_delete, answer.high_watermark
        );
    }
    println!("skipped {total} unacknowledged message(s) of {topic}/{name}");
    Ok(())
}

/// `sluice subscription reset`: the cursor to `offset` or to the first
/// record at or after `time` (RFC 3339) on every partition.
pub async fn reset(
    admin: &Admin,
    topic: &str,
    name: &str,
    offset: Option<u64>,
    time: Option<&str>,
) -> Result<()> {
    let reset = match (offset, time) {
        (Some(offset), None) => SubscriptionReset::Offset(offset),
        (None, Some(time)) => {
            SubscriptionReset::Time(crate::group_offsets::parse_rfc3339_ms(time)?)
        }
        _ => bail!("give one of --to-offset and --to-time"),
    };
    let answers = admin
        .reset_subscription_cursor(topic, name, reset)
        .await
        .with_context(|| format!("resetting subscription {name:?} of {topic:?}"))?;
    println!("PARTITION  ACKNOWLEDGED-BELOW  END");
    for (partition, answer) in answers {
        println!(
            "{partition}  {}  {}",
            answer.mark_delete, answer.high_watermark
        );
    }
    println!("reset the cursor of {topic}/{name}; delivery goes on from there");
    Ok(())
}
