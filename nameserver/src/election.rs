//! Election of the one nameserver that makes assignment decisions (the
//! *assigner*) through a leased key in the metadata store.
//!
//! A candidate grants itself a lease and creates `election/assigner` under
//! it with a create-if-absent transaction. Whoever created the key leads;
//! its proof is an [`ElectionToken`]: the key's create revision (unique to
//! that incarnation of the key) and the lease. The leader renews the lease
//! every `check_interval`; followers look at the key as often and campaign
//! when it is gone (the lease expired or was revoked).
//!
//! Holding the key is not enough for mutual exclusion (etcd's locks do not
//! guarantee it, see the Jepsen analysis of etcd 3.4.3): a paused leader
//! can wake up after its lease expired. So every assignment write carries
//! [`ElectionToken::fence`], a compare on the key's create revision inside
//! the same transaction, and a deposed leader's writes are refused by the
//! metadata store itself. On top of that a leader that could not renew
//! steps down on its own one `check_interval` before its lease could have
//! expired, so it stops issuing writes that would fail anyway.
//!
//! [`ElectionState`] holds the decisions (pure, time passed in);
//! [`run_election`] does the IO.

use crate::metadata::{Compare, LeaseId, MetadataError, MetadataStore, Put, Transaction};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The election key (relative to the metadata key prefix).
pub const ASSIGNER_KEY: &str = "election/assigner";

/// Value of [`ASSIGNER_KEY`]: who leads, and under which lease.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AssignerRecord {
    #[prost(string, tag = "1")]
    pub node_id: String,
    #[prost(string, tag = "2")]
    pub address: String,
    /// The leader's election lease; tells a candidate whether the key it
    /// reads back is its own.
    #[prost(int64, tag = "3")]
    pub lease: i64,
}

/// Proof of leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionToken {
    /// Create revision of the election key this leader created.
    pub create_revision: i64,
    /// The lease the key lives under.
    pub lease: LeaseId,
}

impl ElectionToken {
    /// The compare every assigner write carries: it holds only while the
    /// election key this leader created still exists. After the lease
    /// expires (the key is deleted) or another leader re-creates the key
    /// (new create revision), writes carrying it are refused.
    pub fn fence(&self) -> Compare {
        Compare::CreateRevisionEquals(ASSIGNER_KEY.to_string(), self.create_revision)
    }
}

/// Leadership as published to the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    pub token: ElectionToken,
    /// The leader acts only before this instant; it lies one check
    /// interval before the earliest moment the lease could expire.
    pub valid_until: Instant,
}

impl Leadership {
    pub fn is_valid_at(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

/// The election's timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTimings {
    /// TTL of the leader's lease.
    pub lease_ttl: Duration,
    /// How often the leader renews and followers look at the key; also the
    /// safety margin by which a leader steps down before its lease could
    /// expire.
    pub check_interval: Duration,
}

impl ElectionTimings {
    /// Checks the relation the step-down rule needs: at least two renewal
    /// attempts fit into one lease.
    pub fn validate(&self) -> Result<(), String> {
        if self.check_interval.is_zero() || self.check_interval * 3 > self.lease_ttl {
            return Err(format!(
                "need 0 < 3 x election_check_interval_ms ({} ms) <= election_lease_ttl_ms ({} ms)",
                self.check_interval.as_millis(),
                self.lease_ttl.as_millis()
            ));
        }
        Ok(())
    }
}

/// What the IO loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look at the key; create it if absent.
    Campaign,
    /// Renew the lease; give up waiting at `deadline` (then step down).
    Renew {
        token: ElectionToken,
        deadline: Instant,
    },
    /// Leadership ran out without a confirmed renewal: stop leading and
    /// revoke the lease (best effort) so a follower takes over sooner.
    StepDown { lease: LeaseId },
}

/// How a campaign ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignOutcome {
    /// This node created the key. `lease_requested_at` is when the lease
    /// grant was sent: the lease cannot expire before it plus the TTL.
    Won {
        token: ElectionToken,
        lease_requested_at: Instant,
    },
    /// Someone else holds the key (`None`: nobody right now).
    Lost { holder: Option<String> },
}

/// How a renewal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease was renewed (the request was sent at `sent_at`; etcd
    /// granted `ttl`) and the key is still the one this leader created.
    Renewed { sent_at: Instant, ttl: Duration },
    /// The lease is gone or the key is no longer ours: leadership is lost.
    Lost,
    /// No answer (etcd unreachable, timeout): still leader until
    /// `valid_until`, then [`Action::StepDown`].
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Follower { holder: Option<String> },
    Leader { leadership: Leadership },
}

/// The election's decisions, without IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionState {
    timings: ElectionTimings,
    role: Role,
}

impl ElectionState {
    pub fn new(timings: ElectionTimings) -> Self {
        Self {
            timings,
            role: Role::Follower { holder: None },
        }
    }

    /// Leadership usable at `now`, if any.
    pub fn leadership(&self, now: Instant) -> Option<Leadership> {
        match &self.role {
            Role::Leader { leadership } if leadership.is_valid_at(now) => Some(*leadership),
            _ => None,
        }
    }

    /// Who this node last saw holding the key (itself when leading).
    pub fn holder(&self) -> Option<&str> {
        match &self.role {
            Role::Follower { holder } => holder.as_deref(),
            Role::Leader { .. } => None,
        }
    }

    pub fn next_action(&self, now: Instant) -> Action {
        match &self.role {
            Role::Follower { .. } => Action::Campaign,
            Role::Leader { leadership } if leadership.is_valid_at(now) => Action::Renew {
                token: leadership.token,
                deadline: leadership.valid_until,
            },
            Role::Leader { leadership } => Action::StepDown {
                lease: leadership.token.lease,
            },
        }
    }

    /// Leadership lasts until one check interval before the lease could
    /// expire, counted from when the grant or renewal was *sent*: etcd
    /// starts the TTL no earlier than that.
    fn valid_until(&self, sent_at: Instant, ttl: Duration) -> Instant {
        let ttl = ttl.min(self.timings.lease_ttl);
        sent_at + ttl.saturating_sub(self.timings.check_interval)
    }

    pub fn on_campaign(&mut self, outcome: CampaignOutcome) {
        self.role = match outcome {
            CampaignOutcome::Won {
                token,
                lease_requested_at,
            } => Role::Leader {
                leadership: Leadership {
                    token,
                    valid_until: self.valid_until(lease_requested_at, self.timings.lease_ttl),
                },
            },
            CampaignOutcome::Lost { holder } => Role::Follower { holder },
        };
    }

    pub fn on_renew(&mut self, outcome: RenewOutcome) {
        let Role::Leader { leadership } = &self.role else {
            return;
        };
        let leadership = *leadership;
        match outcome {
            RenewOutcome::Renewed { sent_at, ttl } => {
                let renewed_until = self.valid_until(sent_at, ttl);
                self.role = Role::Leader {
                    leadership: Leadership {
                        valid_until: leadership.valid_until.max(renewed_until),
                        ..leadership
                    },
                };
            }
            RenewOutcome::Lost => self.role = Role::Follower { holder: None },
            RenewOutcome::Failed => {}
        }
    }

    pub fn on_stepped_down(&mut self) {
        self.role = Role::Follower { holder: None };
    }
}

/// Who this nameserver is, as written into the election key.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node_id: String,
    pub address: String,
}

/// Reads the key; if absent, grants a lease and creates the key under it
/// (create-if-absent), then reads it back to learn who won.
pub async fn campaign(
    store: &dyn MetadataStore,
    candidate: &Candidate,
    lease_ttl: Duration,
) -> Result<CampaignOutcome, MetadataError> {
    if let Some(existing) = store.get(ASSIGNER_KEY).await? {
        return Ok(CampaignOutcome::Lost {
            holder: Some(holder_of(&existing.value)),
        });
    }
    let lease_requested_at = Instant::now();
    let ttl_ms = u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX);
    let lease = store.grant(ttl_ms).await?;
    let record = AssignerRecord {
        node_id: candidate.node_id.clone(),
        address: candidate.address.clone(),
        lease,
    };
    let transaction = Transaction {
        compares: vec![Compare::Absent(ASSIGNER_KEY.to_string())],
        puts: vec![Put {
            key: ASSIGNER_KEY.to_string(),
            value: prost::Message::encode_to_vec(&record),
            lease: Some(lease),
        }],
        deletes: Vec::new(),
    };
    let read_back = async {
        store.commit(transaction).await?;
        store.get(ASSIGNER_KEY).await
    }
    .await;
    let outcome = match read_back {
        Ok(Some(entry)) => match decode(&entry.value) {
            Some(found) if found.lease == lease => {
                return Ok(CampaignOutcome::Won {
                    token: ElectionToken {
                        create_revision: entry.create_revision,
                        lease,
                    },
                    lease_requested_at,
                })
            }
            _ => Ok(CampaignOutcome::Lost {
                holder: Some(holder_of(&entry.value)),
            }),
        },
        Ok(None) => Ok(CampaignOutcome::Lost { holder: None }),
        Err(error) => Err(error),
    };
    // Lost, or the outcome is unknown: our lease must not keep a key we do
    // not know we hold.
    if let Err(error) = store.revoke(lease).await {
        tracing::debug!(%error, lease, "could not revoke an unused election lease");
    }
    outcome
}

/// Renews the lease and checks the key is still the one we created.
pub async fn renew(store: &dyn MetadataStore, token: ElectionToken) -> RenewOutcome {
    let sent_at = Instant::now();
    let ttl_ms = match store.keep_alive(token.lease).await {
        Ok(ttl_ms) => ttl_ms,
        Err(MetadataError::LeaseExpired(_)) => return RenewOutcome::Lost,
        Err(error) => {
            tracing::warn!(%error, "assigner could not renew its election lease");
            return RenewOutcome::Failed;
        }
    };
    match store.get(ASSIGNER_KEY).await {
        Ok(Some(entry)) if entry.create_revision == token.create_revision => {
            RenewOutcome::Renewed {
                sent_at,
                ttl: Duration::from_millis(ttl_ms),
            }
        }
        Ok(_) => RenewOutcome::Lost,
        Err(error) => {
            tracing::warn!(%error, "assigner could not read the election key");
            RenewOutcome::Failed
        }
    }
}

fn decode(value: &[u8]) -> Option<AssignerRecord> {
    <AssignerRecord as prost::Message>::decode(value).ok()
}

fn holder_of(value: &[u8]) -> String {
    decode(value).map_or_else(|| "(undecodable)".to_string(), |record| record.node_id)
}

/// The node id of the active assigner, if any.
pub async fn active_assigner(store: &dyn MetadataStore) -> Result<Option<String>, MetadataError> {
    Ok(store
        .get(ASSIGNER_KEY)
        .await?
        .map(|entry| holder_of(&entry.value)))
}

/// Runs the election until `stopping`; publishes leadership on
/// `leadership` and wakes `became_leader` when this node starts leading.
/// On stop a leader revokes its lease so another nameserver takes over at
/// once instead of after the TTL.
pub async fn run_election(
    store: Arc<dyn MetadataStore>,
    candidate: Candidate,
    timings: ElectionTimings,
    leadership: watch::Sender<Option<Leadership>>,
    became_leader: Arc<Notify>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut state = ElectionState::new(timings);
    loop {
        let was_leader = state.leadership(Instant::now());
        match state.next_action(Instant::now()) {
            Action::Campaign => match campaign(store.as_ref(), &candidate, timings.lease_ttl).await
            {
                Ok(outcome) => {
                    let previous_holder = state.holder().map(str::to_string);
                    if let CampaignOutcome::Lost { holder } = &outcome {
                        if *holder != previous_holder {
                            tracing::info!(holder = ?holder, "assigner is another nameserver");
                        }
                    }
                    state.on_campaign(outcome);
                }
                Err(error) => tracing::warn!(%error, "assigner campaign failed"),
            },
            Action::Renew { token, deadline } => {
                let outcome = tokio::time::timeout_at(deadline, renew(store.as_ref(), token))
                    .await
                    .unwrap_or(RenewOutcome::Failed);
                if outcome == RenewOutcome::Lost {
                    tracing::warn!(lease = token.lease, "assigner lost its election key");
                }
                state.on_renew(outcome);
            }
            Action::StepDown { lease } => {
                tracing::warn!(
                    lease,
                    "assigner could not renew its lease in time; stepping down"
                );
                state.on_stepped_down();
                let store = store.clone();
                let bound = timings.lease_ttl;
                tokio::spawn(async move {
                    if let Ok(Err(error)) = tokio::time::timeout(bound, store.revoke(lease)).await {
                        tracing::debug!(%error, lease, "could not revoke a stepped-down lease");
                    }
                });
            }
        }
        let now_leading = state.leadership(Instant::now());
        match (was_leader, now_leading) {
            (None, Some(current)) => {
                tracing::info!(
                    create_revision = current.token.create_revision,
                    lease = current.token.lease,
                    "this nameserver is now the assigner"
                );
                leadership.send_replace(now_leading);
                became_leader.notify_one();
            }
            (Some(_), None) => {
                tracing::warn!("this nameserver is no longer the assigner");
                leadership.send_replace(None);
            }
            _ => {
                leadership.send_replace(now_leading);
            }
        }
        let wait = tokio::time::sleep(timings.check_interval);
        tokio::select! {
            _ = wait => {}
            _ = stopping.wait_for(|stopping| *stopping) => break,
        }
    }
    let last = *leadership.borrow();
    leadership.send_replace(None);
    if let Some(current) = last {
        if let Err(error) = store.revoke(current.token.lease).await {
            tracing::warn!(%error, "could not hand over the assigner role on shutdown");
        } else {
            tracing::info!("assigner role handed over on shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings() -> ElectionTimings {
        ElectionTimings {
            lease_ttl: Duration::from_millis(3_000),
            check_interval: Duration::from_millis(500),
        }
    }

    fn token(create_revision: i64) -> ElectionToken {
        ElectionToken {
            create_revision,
            lease: 77,
        }
    }

    fn won(at: Instant) -> CampaignOutcome {
        CampaignOutcome::Won {
            token: token(5),
            lease_requested_at: at,
        }
    }

    #[test]
    fn a_follower_campaigns() {
        let state = ElectionState::new(timings());
        let now = Instant::now();
        assert_eq!(state.next_action(now), Action::Campaign);
        assert_eq!(state.leadership(now), None);
    }

    #[test]
    fn a_winner_leads_until_one_interval_before_its_lease_can_expire() {
        let start = Instant::now();
        let mut state = ElectionState::new(timings());
        state.on_campaign(won(start));
        let leadership = state.leadership(start).expect("leader");
        assert_eq!(leadership.token, token(5));
        assert_eq!(leadership.valid_until, start + Duration::from_millis(2_500));
        assert_eq!(
            state.next_action(start + Duration::from_millis(100)),
            Action::Renew {
                token: token(5),
                deadline: start + Duration::from_millis(2_500)
            }
        );
        // Nothing renewed: gone at the deadline, and the loop steps down.
        let late = start + Duration::from_millis(2_500);
        assert_eq!(state.leadership(late), None);
        assert_eq!(state.next_action(late), Action::StepDown { lease: 77 });
        state.on_stepped_down();
        assert_eq!(state.next_action(late), Action::Campaign);
    }

    #[test]
    fn renewals_extend_from_when_they_were_sent() {
        let start = Instant::now();
        let mut state = ElectionState::new(timings());
        state.on_campaign(won(start));
        let sent = start + Duration::from_millis(1_000);
        state.on_renew(RenewOutcome::Renewed {
            sent_at: sent,
            ttl: Duration::from_millis(3_000),
        });
        let leadership = state.leadership(sent).expect("still leader");
        assert_eq!(leadership.valid_until, sent + Duration::from_millis(2_500));
        // etcd reporting a longer TTL than asked never extends beyond ours.
        state.on_renew(RenewOutcome::Renewed {
            sent_at: sent,
            ttl: Duration::from_millis(60_000),
        });
        assert_eq!(
            state.leadership(sent).expect("leader").valid_until,
            sent + Duration::from_millis(2_500)
        );
        // A renewal answered late (sent earlier) never shortens leadership.
        state.on_renew(RenewOutcome::Renewed {
            sent_at: start,
            ttl: Duration::from_millis(3_000),
        });
        assert_eq!(
            state.leadership(sent).expect("leader").valid_until,
            sent + Duration::from_millis(2_500)
        );
    }

    #[test]
    fn failed_renewals_keep_leadership_only_until_the_deadline() {
        let start = Instant::now();
        let mut state = ElectionState::new(timings());
        state.on_campaign(won(start));
        state.on_renew(RenewOutcome::Failed);
        assert!(state
            .leadership(start + Duration::from_millis(2_000))
            .is_some());
        assert_eq!(
            state.next_action(start + Duration::from_millis(2_600)),
            Action::StepDown { lease: 77 }
        );
    }

    #[test]
    fn a_lost_key_ends_leadership_at_once() {
        let start = Instant::now();
        let mut state = ElectionState::new(timings());
        state.on_campaign(won(start));
        state.on_renew(RenewOutcome::Lost);
        assert_eq!(state.leadership(start), None);
        assert_eq!(state.next_action(start), Action::Campaign);
    }

    #[test]
    fn losing_a_campaign_remembers_the_holder() {
        let mut state = ElectionState::new(timings());
        state.on_campaign(CampaignOutcome::Lost {
            holder: Some("ns-2".to_string()),
        });
        assert_eq!(state.holder(), Some("ns-2"));
        assert_eq!(state.leadership(Instant::now()), None);
        // A renewal result for a follower changes nothing.
        state.on_renew(RenewOutcome::Renewed {
            sent_at: Instant::now(),
            ttl: Duration::from_millis(3_000),
        });
        assert_eq!(state.leadership(Instant::now()), None);
    }

    #[test]
    fn timings_need_room_for_renewals() {
        assert!(timings().validate().is_ok());
        let tight = ElectionTimings {
            lease_ttl: Duration::from_millis(1_000),
            check_interval: Duration::from_millis(500),
        };
        assert!(tight.validate().is_err());
        let zero = ElectionTimings {
            lease_ttl: Duration::from_millis(1_000),
            check_interval: Duration::ZERO,
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn the_fence_compares_the_create_revision() {
        assert_eq!(
            token(42).fence(),
            Compare::CreateRevisionEquals(ASSIGNER_KEY.to_string(), 42)
        );
    }
}
