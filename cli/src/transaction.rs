//! `sluice transaction list|describe|abort` (ADR 0016 §9): what the
//! transaction coordinators hold, and an operator's end to a hanging
//! transaction.

use crate::output::{json, print_json, print_table};
use crate::units::{format_duration_ms, format_unix_ms};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};
use sluice_client::{Admin, ClientConfig, ClientError, TransactionListing};
use sluice_proto::v1::{TransactionDescription, TransactionEndReason, TransactionState};
use sluice_proto::ErrorCode;

#[derive(Subcommand)]
pub enum TransactionCommand {
    /// List transactional ids and their transactions, from every coordinator.
    List {
        /// Only these states (repeat or comma-separate; default: all).
        #[arg(long = "state", value_enum, value_delimiter = ',')]
        states: Vec<StateArg>,
    },
    /// State, producer, epoch, participants and timing of one transactional id.
    Describe {
        /// The transactional id.
        id: String,
    },
    /// Abort an open transaction (markers go to every participant; the
    /// producer's commit is then refused). Needs Alter on the id.
    Abort {
        /// The transactional id.
        id: String,
    },
}

/// A transaction state, as `--state` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Initialised, no transaction open.
    Empty,
    /// Open: writing.
    Ongoing,
    /// Commit decided, markers being written.
    PrepareCommit,
    /// Abort decided, markers being written.
    PrepareAbort,
    /// Last transaction committed.
    CompleteCommit,
    /// Last transaction aborted.
    CompleteAbort,
}

impl From<StateArg> for TransactionState {
    fn from(value: StateArg) -> Self {
        match value {
            StateArg::Empty => TransactionState::Empty,
            StateArg::Ongoing => TransactionState::Ongoing,
            StateArg::PrepareCommit => TransactionState::PrepareCommit,
            StateArg::PrepareAbort => TransactionState::PrepareAbort,
            StateArg::CompleteCommit => TransactionState::CompleteCommit,
            StateArg::CompleteAbort => TransactionState::CompleteAbort,
        }
    }
}

pub async fn run(config: ClientConfig, command: TransactionCommand) -> Result<()> {
    let admin = Admin::connect(config).await?;
    match command {
        TransactionCommand::List { states } => {
            let states: Vec<TransactionState> = states.into_iter().map(Into::into).collect();
            let listing = admin
                .list_transactions(&states)
                .await
                .map_err(|error| explain(error, "list"))?;
            print_listing(&listing, sluice_proto::now_unix_ms())
        }
        TransactionCommand::Describe { id } => {
            let described = admin
                .describe_transaction(&id)
                .await
                .map_err(|error| explain(error, "describe"))?;
            let now_ms = sluice_proto::now_unix_ms();
            if json() {
                return print_json(&view(&described, now_ms));
            }
            print_description(&described, now_ms);
            Ok(())
        }
        TransactionCommand::Abort { id } => {
            admin
                .abort_transaction(&id)
                .await
                .map_err(|error| explain(error, "abort"))?;
            if json() {
                return print_json(&json!({ "transactional_id": id, "aborted": true }));
            }
            println!(
                "aborted the open transaction of '{id}': abort markers go to its participants; \
                 its producer's commit will be refused"
            );
            Ok(())
        }
    }
}

/// The error with what to do about it.
fn explain(error: ClientError, action: &str) -> anyhow::Error {
    let hint = match error.code() {
        Some(ErrorCode::NotAuthorized) => Some(match action {
            "abort" => "aborting needs Alter on the transactional id (`sluice acl add`)",
            _ => "looking needs Describe on the transactional id (`sluice acl add`)",
        }),
        Some(ErrorCode::InvalidArgument) if error.to_string().contains("not enabled") => Some(
            "transactions are off on the brokers: set `[transactions] enabled = true` in their configuration",
        ),
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::anyhow!("transaction {action} failed: {error}\nhint: {hint}"),
        None => anyhow::Error::new(error).context(format!("transaction {action} failed")),
    }
}

/// `prepare_commit` for TRANSACTION_STATE_PREPARE_COMMIT.
fn state_name(value: i32) -> String {
    match TransactionState::try_from(value) {
        Ok(state) => state
            .as_str_name()
            .trim_start_matches("TRANSACTION_STATE_")
            .to_ascii_lowercase(),
        Err(_) => format!("unknown({value})"),
    }
}

fn reason_name(value: i32) -> String {
    match TransactionEndReason::try_from(value) {
        Ok(TransactionEndReason::Unspecified) => String::new(),
        Ok(reason) => reason
            .as_str_name()
            .trim_start_matches("TRANSACTION_END_REASON_")
            .to_ascii_lowercase(),
        Err(_) => format!("unknown({value})"),
    }
}

/// How long the open transaction has run (`None` unless it is open or
/// ending, or without a start time).
fn open_for_ms(described: &TransactionDescription, now_ms: i64) -> Option<u64> {
    let open = matches!(
        TransactionState::try_from(described.state),
        Ok(TransactionState::Ongoing
            | TransactionState::PrepareCommit
            | TransactionState::PrepareAbort)
    );
    let started = i64::try_from(described.started_at_ms).ok()?;
    (open && started > 0).then(|| u64::try_from(now_ms.saturating_sub(started)).unwrap_or(0))
}

fn participants(described: &TransactionDescription) -> Vec<String> {
    described
        .participants
        .iter()
        .map(|participant| {
            if participant.subscription.is_empty() {
                format!("{}/{}", participant.topic, participant.partition)
            } else {
                format!(
                    "{}/{} (subscription {})",
                    participant.topic, participant.partition, participant.subscription
                )
            }
        })
        .collect()
}

fn time_or_null(unix_ms: u64) -> Value {
    match i64::try_from(unix_ms) {
        Ok(at) if at > 0 => Value::String(format_unix_ms(at)),
        _ => Value::Null,
    }
}

/// One transaction for `--output json`.
fn view(described: &TransactionDescription, now_ms: i64) -> Value {
    let participants: Vec<Value> = described
        .participants
        .iter()
        .map(|participant| {
            json!({
                "topic": participant.topic,
                "partition": participant.partition,
                "subscription": if participant.subscription.is_empty() { Value::Null } else { json!(participant.subscription) },
            })
        })
        .collect();
    let reason = reason_name(described.reason);
    json!({
        "transactional_id": described.transactional_id,
        "state": state_name(described.state),
        "producer_id": described.producer_id,
        "producer_epoch": described.producer_epoch,
        "participants": participants,
        "timeout_ms": described.timeout_ms,
        "started_at": time_or_null(described.started_at_ms),
        "updated_at": time_or_null(described.updated_at_ms),
        "open_for_ms": open_for_ms(described, now_ms),
        "end_reason": if reason.is_empty() { Value::Null } else { json!(reason) },
        "log_partition": described.log_partition,
    })
}

fn print_listing(listing: &TransactionListing, now_ms: i64) -> Result<()> {
    if json() {
        let transactions: Vec<Value> = listing
            .transactions
            .iter()
            .map(|described| view(described, now_ms))
            .collect();
        let unanswered: Vec<Value> = listing
            .unanswered
            .iter()
            .map(|missing| json!({ "log_partition": missing.partition, "error": missing.error }))
            .collect();
        return print_json(&json!({
            "transactions": transactions,
            "unanswered_log_partitions": unanswered,
        }));
    }
    let rows: Vec<Vec<String>> = listing
        .transactions
        .iter()
        .map(|described| {
            vec![
                described.transactional_id.clone(),
                state_name(described.state),
                described.producer_id.to_string(),
                described.producer_epoch.to_string(),
                described.participants.len().to_string(),
                open_for_ms(described, now_ms).map_or("-".into(), format_duration_ms),
                format_duration_ms(described.timeout_ms),
            ]
        })
        .collect();
    print_table(
        &[
            "TRANSACTIONAL-ID",
            "STATE",
            "PRODUCER",
            "EPOCH",
            "PARTICIPANTS",
            "OPEN-FOR",
            "TIMEOUT",
        ],
        &rows,
    );
    for missing in &listing.unanswered {
        eprintln!(
            "warning: transaction log partition {} did not answer ({}); its ids are missing",
            missing.partition, missing.error
        );
    }
    Ok(())
}

fn print_description(described: &TransactionDescription, now_ms: i64) {
    println!("transactional id: {}", described.transactional_id);
    println!("state:            {}", state_name(described.state));
    println!(
        "producer:         id {} epoch {}",
        described.producer_id, described.producer_epoch
    );
    println!(
        "timeout:          {}",
        format_duration_ms(described.timeout_ms)
    );
    if let Some(open_ms) = open_for_ms(described, now_ms) {
        println!("open for:         {}", format_duration_ms(open_ms));
    }
    if let Value::String(at) = time_or_null(described.started_at_ms) {
        println!("started:          {at}");
    }
    if let Value::String(at) = time_or_null(described.updated_at_ms) {
        println!("updated:          {at}");
    }
    let reason = reason_name(described.reason);
    if !reason.is_empty() && described.state != TransactionState::Ongoing as i32 {
        println!("ended by:         {reason}");
    }
    println!("log partition:    {}", described.log_partition);
    let participants = participants(described);
    println!("participants:     {}", participants.len());
    for participant in participants {
        println!("  {participant}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::TransactionParticipant;

    fn ongoing() -> TransactionDescription {
        TransactionDescription {
            transactional_id: "copier-7".into(),
            producer_id: 12,
            producer_epoch: 3,
            state: TransactionState::Ongoing as i32,
            reason: TransactionEndReason::Client as i32,
            participants: vec![TransactionParticipant {
                topic: "out".into(),
                partition: 1,
                subscription: String::new(),
            }],
            timeout_ms: 60_000,
            started_at_ms: 1_000,
            updated_at_ms: 1_500,
            log_partition: 4,
        }
    }

    #[test]
    fn states_and_reasons_print_as_snake_case_and_unknown_values_do_not_panic() {
        assert_eq!(
            state_name(TransactionState::PrepareCommit as i32),
            "prepare_commit"
        );
        assert_eq!(state_name(99), "unknown(99)");
        assert_eq!(reason_name(TransactionEndReason::Admin as i32), "admin");
        assert_eq!(reason_name(0), "");
        assert_eq!(reason_name(-4), "unknown(-4)");
    }

    #[test]
    fn the_json_view_names_state_participants_and_open_time() {
        let value = view(&ongoing(), 4_000);
        assert_eq!(value["state"], "ongoing");
        assert_eq!(value["producer_epoch"], 3);
        assert_eq!(value["participants"][0]["topic"], "out");
        assert_eq!(value["participants"][0]["partition"], 1);
        assert!(value["participants"][0]["subscription"].is_null());
        assert_eq!(value["open_for_ms"], 3_000);
        assert_eq!(value["started_at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(value["end_reason"], "client");
    }

    #[test]
    fn only_open_transactions_have_an_open_time() {
        let mut ended = ongoing();
        ended.state = TransactionState::CompleteAbort as i32;
        assert_eq!(open_for_ms(&ended, 4_000), None);
        let mut unstarted = ongoing();
        unstarted.started_at_ms = 0;
        assert_eq!(open_for_ms(&unstarted, 4_000), None);
        // A clock behind the start is 0, not a panic.
        assert_eq!(open_for_ms(&ongoing(), 10), Some(0));
        let mut far = ongoing();
        far.started_at_ms = u64::MAX;
        assert_eq!(open_for_ms(&far, 4_000), None);
    }

    #[test]
    fn state_flags_map_to_every_state() {
        use clap::ValueEnum;
        let mapped: Vec<TransactionState> = StateArg::value_variants()
            .iter()
            .map(|arg| TransactionState::from(*arg))
            .collect();
        assert_eq!(mapped.len(), 6);
        assert!(!mapped.contains(&TransactionState::Unspecified));
        let names: Vec<String> = mapped
            .iter()
            .map(|state| state_name(*state as i32))
            .collect();
        for arg in StateArg::value_variants() {
            let flag = arg
                .to_possible_value()
                .map(|value| value.get_name().replace('-', "_"))
                .unwrap_or_default();
            assert!(names.contains(&flag), "{flag}");
        }
    }

    #[test]
    fn errors_carry_a_hint_for_the_operator() {
        let denied = ClientError::Server(sluice_proto::SluiceError::new(
            ErrorCode::NotAuthorized,
            "principal User:bob may not Alter TransactionalId copier-7",
        ));
        let text = format!("{:#}", explain(denied, "abort"));
        assert!(text.contains("Alter on the transactional id"), "{text}");
        assert!(text.contains("bob"), "{text}");
        let disabled = ClientError::Server(sluice_proto::SluiceError::new(
            ErrorCode::InvalidArgument,
            "transactions are not enabled on this broker ([transactions] enabled = false)",
        ));
        let text = format!("{:#}", explain(disabled, "list"));
        assert!(text.contains("enabled = true"), "{text}");
    }
}
