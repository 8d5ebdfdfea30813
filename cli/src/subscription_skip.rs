//! `sluice subscription skip` and `sluice subscription clear` (issue 15):
//! move a subscription's cursor forward on every partition.

use anyhow::{bail, Context, Result};
use sluice_client::{Admin, SubscriptionSkip};

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
