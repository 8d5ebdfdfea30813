//! An exactly-once copier (ADR 0016): consumes `--input` in the consumer
//! group `--group` (read-committed), writes every record unchanged (key,
//! value, same partition number) to `--output` inside a transaction, and
//! commits the group's offsets *in the same transaction*
//! (`send_offsets_to_transaction`), every `--commit-every` records or
//! `--commit-interval-ms`, whichever comes first. Each output record gets
//! the header `copier-txn` = `<producer id>.<epoch>` of its transaction
//! (unique per transaction), so a checker can tell which transaction wrote
//! it.
//!
//! Through a crash of this process or of any single Sluice service, every
//! input record shows in the output exactly once for read-committed readers:
//! a transaction's output and its input offsets commit together or not at
//! all. On `TRANSACTION_ABORTABLE`, a lost partition (rebalance) or a
//! failed send it aborts, rewinds to the committed offsets and goes on; on
//! `PRODUCER_FENCED` (another instance took `--transactional-id`) it exits
//! with status 3. Run one instance per transactional id (`copier-1`,
//! `copier-2`, ...); a restarted instance reuses its id, which fences the
//! old one.
//!
//! Brokers need `[transactions] enabled = true`; the output topic needs at
//! least as many partitions as the input. Against `sluice dev
//! --transactions`:
//!
//! ```sh
//! cargo run -p sluice-client --example copier -- --input payments --output payments-copy \
//!     --group copier --transactional-id copier-1
//! ```
//!
//! Flags (defaults): `--bootstrap URL[,URL]`, `--input TOPIC`, `--output
//! TOPIC`, `--group GROUP`, `--transactional-id ID`, `--commit-every N`
//! (750, at most 100,000), `--commit-interval-ms MS` (100),
//! `--transaction-timeout-ms MS` (60,000), `--session-timeout-ms MS`
//! (10,000), and for tests `--exit-after-commits N` (exit with status 9
//! right after the Nth commit, before anything else runs). Every flag can
//! also be given as an environment variable (`--commit-every` as
//! `COPIER_COMMIT_EVERY`); `--bootstrap` defaults to `SLUICE_BOOTSTRAP`,
//! then `http://127.0.0.1:7400`.
//!
//! Progress goes to stdout, one line per event, `key=value` separated by
//! spaces (what `tests/tests/copier.rs` parses):
//! `copier id=copier-1 event=started|committed|aborted|fenced|failed|crashed ...`.

use sluice_client::{
    ClientConfig, ClientError, Consumer, ConsumerConfig, ConsumerRecord, Isolation, Producer,
    ProducerConfig, Record, TopicPartitionOffset,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Exit status when another instance took the transactional id.
const EXIT_FENCED: i32 = 3;
/// Exit status on a bad argument or an error retrying cannot fix.
const EXIT_FAILED: i32 = 1;
/// Exit status of the crash `--exit-after-commits` asks for.
const EXIT_CRASHED: i32 = 9;
/// Attempts of a commit whose outcome is unknown (`Timeout`) before the
/// transaction is aborted.
const MAX_END_ATTEMPTS: u32 = 5;
/// Largest `--commit-every`, in records (a transaction stays small).
const MAX_COMMIT_EVERY: usize = 100_000;
/// Pause after an abort, doubled per abort in a row up to the largest, in
/// ms: a cluster refusing every transaction is not hammered.
const ABORT_BACKOFF_MS: u64 = 50;
const ABORT_BACKOFF_MAX_MS: u64 = 2_000;
/// How long starting (InitProducerId, joining the group), and an abort or
/// rewind, are retried while the cluster answers "not yet" (coordinators
/// moving or loading), in ms.
const RECOVERY_TIMEOUT_MS: u64 = 120_000;
/// First and largest pause between such attempts, in ms.
const RECOVERY_BACKOFF_MS: u64 = 100;
const RECOVERY_BACKOFF_MAX_MS: u64 = 2_000;
/// Header naming the transaction that wrote an output record.
const TXN_HEADER: &str = "copier-txn";

#[derive(Debug, Clone)]
struct Args {
    bootstrap: Vec<String>,
    input: String,
    output: String,
    group: String,
    transactional_id: String,
    /// Records per transaction at most.
    commit_every: usize,
    /// Longest a transaction stays open collecting records, in ms.
    commit_interval_ms: u64,
    /// The coordinator aborts a transaction open longer, in ms.
    transaction_timeout_ms: u64,
    /// The group evicts this member after this long without a heartbeat,
    /// in ms.
    session_timeout_ms: u32,
    /// Fault injection for tests: exit (status 9, nothing cleaned up)
    /// right after this many transactions committed, before anything
    /// else happens: the worst moment to crash, when the output is
    /// committed and nothing after it ran.
    exit_after_commits: Option<u64>,
}

/// The value of `--name` from the command line, else of `COPIER_NAME`.
fn flag(argv: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    if let Some(index) = argv.iter().position(|arg| *arg == long) {
        return argv.get(index + 1).cloned();
    }
    let variable = format!("COPIER_{}", name.to_uppercase().replace('-', "_"));
    std::env::var(variable).ok()
}

fn required(argv: &[String], name: &str) -> Result<String, String> {
    flag(argv, name).ok_or_else(|| format!("--{name} is required"))
}

fn number<T: std::str::FromStr>(argv: &[String], name: &str, default: T) -> Result<T, String> {
    match flag(argv, name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("--{name}: '{text}' is not a number")),
    }
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let bootstrap = flag(&argv, "bootstrap")
        .or_else(|| std::env::var("SLUICE_BOOTSTRAP").ok())
        .unwrap_or_else(|| "http://127.0.0.1:7400".into());
    let args = Args {
        bootstrap: bootstrap.split(',').map(str::to_string).collect(),
        input: required(&argv, "input")?,
        output: required(&argv, "output")?,
        group: required(&argv, "group")?,
        transactional_id: required(&argv, "transactional-id")?,
        commit_every: number(&argv, "commit-every", 750)?,
        commit_interval_ms: number(&argv, "commit-interval-ms", 100)?,
        transaction_timeout_ms: number(&argv, "transaction-timeout-ms", 60_000)?,
        session_timeout_ms: number(&argv, "session-timeout-ms", 10_000)?,
        exit_after_commits: match flag(&argv, "exit-after-commits") {
            None => None,
            Some(_) => Some(number(&argv, "exit-after-commits", 0)?),
        },
    };
    if args.commit_every == 0 || args.commit_every > MAX_COMMIT_EVERY {
        return Err(format!("--commit-every must be 1..={MAX_COMMIT_EVERY}"));
    }
    if args.commit_interval_ms == 0 || args.commit_interval_ms >= args.transaction_timeout_ms {
        return Err(
            "--commit-interval-ms must be above 0 and below --transaction-timeout-ms".into(),
        );
    }
    Ok(args)
}

/// Why a transaction did not commit.
#[derive(Debug)]
enum Failure {
    /// Abort, rewind to the committed offsets, go on.
    Abort(String),
    /// Stop.
    Fatal(ClientError),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::ProducerFenced(_)
            | ClientError::CorruptBatch { .. }
            | ClientError::DataLost { .. }
            | ClientError::InvalidArgument(_)
            // Out of order: a bug here, not a state to retry from.
            | ClientError::InvalidTransactionState(_)
            | ClientError::Closed => Failure::Fatal(error),
            other => Failure::Abort(other.to_string()),
        }
    }
}

/// Retries of a step that must eventually work (start, abort, rewind):
/// retriable errors are waited out with a doubling backoff for at most
/// [`RECOVERY_TIMEOUT_MS`].
struct Recovery {
    deadline: Instant,
    backoff: Duration,
}

impl Recovery {
    fn new() -> Self {
        Self {
            deadline: Instant::now() + Duration::from_millis(RECOVERY_TIMEOUT_MS),
            backoff: Duration::from_millis(RECOVERY_BACKOFF_MS),
        }
    }

    /// Waits before the next attempt, or gives `error` back when it is not
    /// retriable or the time is up.
    async fn after(&mut self, error: ClientError, what: &str) -> Result<(), ClientError> {
        if !error.is_retriable() || Instant::now() >= self.deadline {
            return Err(error);
        }
        tracing::warn!(%error, "{what} failed; retrying");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(RECOVERY_BACKOFF_MAX_MS));
        Ok(())
    }
}

/// One progress line on stdout.
fn progress(id: &str, event: &str, details: &str) {
    let at_ms = sluice_client::now_unix_ms();
    println!("copier id={id} event={event} at_ms={at_ms} {details}");
}

struct Copier {
    args: Args,
    consumer: Consumer,
    producer: Producer,
    /// A transaction is open (begun, not yet committed or aborted).
    open: bool,
    committed_records: u64,
    /// Transactions committed by this process.
    commits: u64,
}

impl Copier {
    /// [`Copier::start`], retried while the error is retriable, for at
    /// most [`RECOVERY_TIMEOUT_MS`].
    async fn start_retrying(args: Args) -> Result<Self, ClientError> {
        let mut retry = Recovery::new();
        loop {
            match Copier::start(args.clone()).await {
                Ok(copier) => return Ok(copier),
                Err(error) => retry.after(error, "start").await?,
            }
        }
    }

    async fn start(args: Args) -> Result<Self, ClientError> {
        let client = ClientConfig {
            bootstrap: args.bootstrap.clone(),
            client_id: args.transactional_id.clone(),
            ..ClientConfig::default()
        };
        // Fences every older instance with this id before reading anything.
        let producer = Producer::new(ProducerConfig {
            client: client.clone(),
            transactional_id: Some(args.transactional_id.clone()),
            transaction_timeout_ms: args.transaction_timeout_ms,
            delivery_timeout_ms: args.transaction_timeout_ms.min(30_000),
            ..ProducerConfig::default()
        })
        .await?;
        let consumer = Consumer::subscribe(
            ConsumerConfig {
                client,
                group: Some(args.group.clone()),
                // Offsets are committed inside the transactions only.
                auto_commit: false,
                isolation: Isolation::ReadCommitted,
                session_timeout_ms: args.session_timeout_ms,
                ..ConsumerConfig::default()
            },
            &[args.input.as_str()],
        )
        .await?;
        Ok(Self {
            args,
            consumer,
            producer,
            open: false,
            committed_records: 0,
            commits: 0,
        })
    }

    /// Copies one transaction's worth of records: how many and the
    /// transaction's tag; `None` when no record arrived within the commit
    /// interval (no transaction was opened).
    async fn copy_transaction(&mut self) -> Result<Option<(u64, String)>, Failure> {
        let interval = Duration::from_millis(self.args.commit_interval_ms);
        // Wait for input outside a transaction: idle time must not count
        // towards the transaction timeout.
        let Some(first) = self.consumer.recv_timeout(interval).await? else {
            return Ok(None);
        };
        self.producer.begin_transaction()?;
        self.open = true;
        let tag = match self.producer.transactional_identity() {
            Some((producer_id, epoch)) => format!("{producer_id}.{epoch}"),
            None => return Err(Failure::Abort("no transactional identity".into())),
        };
        // Each partition's next offset after the records copied in this
        // transaction.
        let mut touched: BTreeMap<(String, u32), u64> = BTreeMap::new();
        let deadline = Instant::now() + interval;
        let mut next = Some(first);
        let mut copied = 0;
        while let Some(record) = next.take() {
            let partition = (record.topic.clone(), record.partition);
            // Offsets only move forward within one ownership (skipping
            // aborted records and markers); going back means the partition
            // was revoked and given back inside one `recv`, restarting at
            // the committed offset: the records copied so far would be
            // copied twice.
            if let Some(expected) = touched.insert(partition, record.offset + 1) {
                if record.offset < expected {
                    return Err(Failure::Abort(format!(
                        "partition {}/{} went back from {expected} to {} (reassigned)",
                        record.topic, record.partition, record.offset
                    )));
                }
            }
            self.copy(record, &tag).await?;
            copied += 1;
            if copied >= self.args.commit_every as u64 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            next = self.consumer.recv_timeout(left).await?;
        }
        self.commit(&touched).await?;
        Ok(Some((copied, tag)))
    }

    async fn copy(&self, record: ConsumerRecord, tag: &str) -> Result<(), ClientError> {
        let mut output = Record::new(self.args.output.clone(), record.value.unwrap_or_default())
            .with_partition(record.partition)
            .with_header(TXN_HEADER, tag.to_string());
        if let Some(key) = record.key {
            output = output.with_key(key);
        }
        for (name, value) in record.headers {
            output = output.with_header(name, value);
        }
        // The delivery future is not awaited: `commit_transaction` waits
        // for every acknowledgement and fails if one failed.
        drop(self.producer.enqueue(output).await?);
        Ok(())
    }

    /// Adds the consumed offsets to the transaction and commits it. A
    /// partition that was taken away while its records were in this
    /// transaction aborts it: its next owner starts from the committed
    /// offset and copies those records again.
    async fn commit(&mut self, touched: &BTreeMap<(String, u32), u64>) -> Result<(), Failure> {
        let owned: BTreeSet<(String, u32)> = self.consumer.assignment().into_iter().collect();
        if let Some(lost) = touched.keys().find(|partition| !owned.contains(*partition)) {
            return Err(Failure::Abort(format!(
                "partition {}/{} was reassigned during the transaction",
                lost.0, lost.1
            )));
        }
        let Some(group) = self.consumer.group_metadata() else {
            return Err(Failure::Abort("not a member of the group".into()));
        };
        let offsets: Vec<TopicPartitionOffset> = self.consumer.uncommitted_offsets();
        self.producer
            .send_offsets_to_transaction(&offsets, &group)
            .await?;
        let mut attempt = 1;
        loop {
            match self.producer.commit_transaction().await {
                Ok(()) => break,
                // The outcome is unknown: the commit is idempotent, ask again.
                Err(ClientError::Timeout { .. }) if attempt < MAX_END_ATTEMPTS => attempt += 1,
                Err(error) => return Err(error.into()),
            }
        }
        self.open = false;
        self.commits += 1;
        if self.args.exit_after_commits == Some(self.commits) {
            let id = &self.args.transactional_id;
            progress(id, "crashed", &format!("commits={}", self.commits));
            std::process::exit(EXIT_CRASHED);
        }
        self.consumer.mark_committed(&offsets);
        Ok(())
    }

    /// Aborts the open transaction (if any) and rewinds every partition to
    /// its committed offset.
    async fn abort(&mut self) -> Result<(), ClientError> {
        let mut retry = Recovery::new();
        while self.open {
            match self.producer.abort_transaction().await {
                Ok(()) => self.open = false,
                Err(error) => retry.after(error, "abort").await?,
            }
        }
        let mut retry = Recovery::new();
        loop {
            // The group coordinator moving, offsets still pending.
            match self.consumer.rewind_to_committed().await {
                Ok(()) => return Ok(()),
                Err(error) => retry.after(error, "rewind").await?,
            }
        }
    }

    async fn run(mut self) -> i32 {
        let id = self.args.transactional_id.clone();
        progress(&id, "started", &format!("group={}", self.args.group));
        let mut aborts_in_a_row: u32 = 0;
        loop {
            let failure = match self.copy_transaction().await {
                Ok(None) => continue,
                Ok(Some((copied, tag))) => {
                    aborts_in_a_row = 0;
                    self.committed_records += copied;
                    progress(
                        &id,
                        "committed",
                        &format!(
                            "txn={tag} records={copied} total={}",
                            self.committed_records
                        ),
                    );
                    continue;
                }
                Err(failure) => failure,
            };
            let reason = match failure {
                Failure::Fatal(ClientError::ProducerFenced(reason)) => {
                    progress(&id, "fenced", &format!("reason={reason:?}"));
                    return EXIT_FENCED;
                }
                Failure::Fatal(error) => {
                    progress(&id, "failed", &format!("reason={:?}", error.to_string()));
                    return EXIT_FAILED;
                }
                Failure::Abort(reason) => reason,
            };
            match self.abort().await {
                Ok(()) => {
                    progress(&id, "aborted", &format!("reason={reason:?}"));
                    let backoff = ABORT_BACKOFF_MS << aborts_in_a_row.min(6);
                    aborts_in_a_row += 1;
                    let backoff = Duration::from_millis(backoff.min(ABORT_BACKOFF_MAX_MS));
                    tokio::time::sleep(backoff).await;
                }
                Err(ClientError::ProducerFenced(fenced)) => {
                    progress(&id, "fenced", &format!("reason={fenced:?}"));
                    return EXIT_FENCED;
                }
                Err(error) => {
                    progress(&id, "failed", &format!("reason={:?}", error.to_string()));
                    return EXIT_FAILED;
                }
            }
        }
    }
}

#[tokio::main]
async fn main() {
    // The SDK's warnings (retries, failovers) to stderr; `RUST_LOG` filters.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("copier: {message}");
            std::process::exit(EXIT_FAILED);
        }
    };
    let id = args.transactional_id.clone();
    let status = match Copier::start_retrying(args).await {
        Ok(copier) => copier.run().await,
        Err(ClientError::ProducerFenced(reason)) => {
            progress(&id, "fenced", &format!("reason={reason:?}"));
            EXIT_FENCED
        }
        Err(error) => {
            progress(&id, "failed", &format!("reason={:?}", error.to_string()));
            EXIT_FAILED
        }
    };
    std::process::exit(status);
}
