//! `sluice partition`: an operator's decisions about one partition.

use anyhow::Result;
use clap::Subcommand;
use sluice_client::{Admin, ClientConfig};

#[derive(Subcommand)]
pub enum PartitionCommand {
    /// Bring back a partition that is offline because a range of its log
    /// is damaged on every copy (`cluster status` shows it and why). With
    /// --accept-data-loss the log continues after the highest offset any
    /// copy reports, never reusing an offset; the damaged range is lost
    /// (reads there fail). Closed segments listed under damaged
    /// partitions are accepted too: their owner records the range as
    /// lost and stops reporting it. Without the flag, nothing changes and
    /// the refusal explains.
    Recover {
        topic: String,
        partition: u32,
        /// Accept that the damaged offsets are lost for good.
        #[arg(long)]
        accept_data_loss: bool,
        /// Continue the log at this offset at the earliest; only needed
        /// when every copy lost the segment (the error says so). Use the
        /// highest offset ever produced, or more.
        #[arg(long, default_value_t = 0)]
        resume_at_offset: u64,
    },
}

pub async fn run(config: ClientConfig, command: PartitionCommand) -> Result<()> {
    let admin = Admin::connect(config).await?;
    match command {
        PartitionCommand::Recover {
            topic,
            partition,
            accept_data_loss,
            resume_at_offset,
        } => {
            let segments = admin
                .accept_data_loss(&topic, partition, accept_data_loss, resume_at_offset)
                .await?;
            if segments.is_empty() {
                println!(
                    "{topic}/{partition} has no open segment and no closed one reported damaged on every copy: nothing to decide"
                );
            } else {
                println!(
                    "{topic}/{partition}: data loss accepted for segments {segments:?}; its owner continues after the highest offset any copy reports and records the unreadable ranges as lost (see `sluice cluster status`, `sluice topic describe`)"
                );
            }
        }
    }
    Ok(())
}
