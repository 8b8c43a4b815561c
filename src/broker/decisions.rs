//! Decision writes: each is one job on the store's writer that reads the
//! subject's state, lets the domain plan the changes, and returns them with
//! their audit records, committed together.

use super::{trail, written, Actor, Broker, BrokerError, Read, Recorded, Subject, Written};
use crate::{
    domain::{
        authorize::{self, Question},
        machine::{self, Answer, SettingsUpdate},
        privacy::{self, PrivacyState},
        App, AuditAction, AuditEntry, Cause, Change, Client, DomainError, Lifetime,
        LifetimeRequest, NagState, Principal, Scope, SessionId, StateQuery, SubjectState, Target,
        UserDecisions,
    },
    store::{View, WriteSet},
};
use trail::{AuditShape, DecisionWrite};

/// Most due timers one expiry write handles.
const EXPIRY_BATCH: usize = 512;

/// What a decision plan sees: the app, the subject's stored state, the
/// live decisions (lapsed grants already gone) and the time of the write.
pub(super) struct Planning<'a> {
    pub app: &'a App,
    pub state: &'a SubjectState,
    pub decisions: &'a UserDecisions,
    pub now_ms: u64,
}

impl Broker {
    /// The user's answer to a popup; an ALLOW may carry a lifetime.
    pub async fn record(
        &self,
        s: &Subject,
        scope: Scope,
        client: Client,
        answer: Answer,
        lifetime: LifetimeRequest,
        who: &Principal,
    ) -> Result<Written<Recorded>, BrokerError> {
        machine::check_answer(scope, answer)?;
        let actor = Actor::new(&who.name, Some(client.clone()));
        let rules = self.rules.clone();
        let policy = self.policy;
        let lifetime = lifetime.resolve(self.now_ms(), self.session_idle_ms)?;
        let w = DecisionWrite {
            lifetime,
            forget_user_state: false,
            actor: actor.clone(),
            audit: AuditShape::Answer(scope, answer),
        };
        self.write_decisions(s, w, move |p: Planning<'_>| {
            // Only a popup the pipeline would show this client now can be
            // answered: the same verdict Authorize gives.
            let q = Question {
                app: p.app,
                state: p.state,
                target: Target::Authorize,
                client: &client,
                rules: &rules,
                policy: &policy,
                now_ms: p.now_ms,
            };
            let verdict = authorize::authorize(&q, scope);
            let plan = machine::plan_answer(&verdict, p.decisions, answer)?;
            let state = plan
                .changes
                .iter()
                .rev()
                .find(|c| c.scope == scope)
                .map_or_else(
                    || p.decisions.get(&scope).copied().unwrap_or_default(),
                    |c| c.new,
                );
            Ok((
                plan.changes,
                Recorded {
                    err_msg: plan.err_msg,
                    state,
                },
            ))
        })
        .await
    }

    /// The user changed the settings page; returns the new authSetting.
    pub async fn update_setting(
        &self,
        s: &Subject,
        update: SettingsUpdate,
        lifetime: LifetimeRequest,
        who: &Principal,
    ) -> Result<Written<std::collections::BTreeMap<Scope, bool>>, BrokerError> {
        let actor = Actor::new(&who.name, None);
        let lifetime = lifetime.resolve(self.now_ms(), self.session_idle_ms)?;
        let w = DecisionWrite {
            lifetime,
            forget_user_state: false,
            actor: actor.clone(),
            audit: AuditShape::PerChange(AuditAction::SettingsChanged),
        };
        self.write_decisions(s, w, move |p: Planning<'_>| {
            let changes = machine::plan_settings_update(p.app, p.decisions, &update)?;
            let mut after = p.decisions.clone();
            for c in &changes {
                after.insert(c.scope, c.new);
            }
            Ok((changes, machine::auth_setting(&after)))
        })
        .await
    }

    /// The user deleted the mini program: forget every decision.
    pub async fn remove_app(
        &self,
        s: &Subject,
        who: &Principal,
    ) -> Result<Written<()>, BrokerError> {
        let actor = Actor::new(&who.name, None);
        // The privacy answer and anti-nag state go too: deleting the mini
        // program forgets them.
        let w = DecisionWrite {
            lifetime: Lifetime::Permanent,
            forget_user_state: true,
            actor: actor.clone(),
            audit: AuditShape::Subject(AuditAction::AppRemoved),
        };
        self.write_decisions(s, w, |p: Planning<'_>| {
            Ok((machine::plan_forget(p.decisions, Cause::AppRemoved), ()))
        })
        .await
    }

    /// The user's answer to the privacy agreement, for the guide's current
    /// version; returns (needAuthorization, version).
    pub async fn record_privacy_decision(
        &self,
        s: &Subject,
        agree: bool,
        who: &Principal,
    ) -> Result<Read<(bool, u64)>, BrokerError> {
        let actor = Actor::new(&who.name, None);
        let subject = s.clone();
        let audit = vec![actor.entry(s, None, AuditAction::PrivacyAnswered { agreed: agree })];
        let clock = self.clock.clone();
        let (committed, value) = self
            .store
            .write(move |view: &dyn View| {
                let app = view.registered_app(&subject.app)?;
                if app.declarations.privacy.is_none() {
                    return Err(DomainError::FailedPrecondition {
                        message: format!(
                            "app {:?} declares no privacy guide: there is nothing to agree to",
                            subject.app.as_str()
                        ),
                    }
                    .into());
                }
                let answer = PrivacyState {
                    agreed: agree,
                    version: app.privacy_version,
                    at_ms: clock.now_ms(),
                };
                let need = privacy::need_authorization(&app, Some(&answer));
                Ok((
                    WriteSet {
                        privacy: Some((subject, Some(answer))),
                        audit,
                        ..WriteSet::default()
                    },
                    (need, app.privacy_version),
                ))
            })
            .await?;
        Ok(Read {
            value,
            revision: committed.revision,
        })
    }

    /// The runtime session ended: its one-time grants lapse.
    pub async fn end_session(
        &self,
        s: &Subject,
        session: SessionId,
        who: &Principal,
    ) -> Result<Written<()>, BrokerError> {
        let subject = s.clone();
        let actor = Actor::new(&who.name, None);
        let clock = self.clock.clone();
        let (committed, ()) = self
            .store
            .write(move |view: &dyn View| {
                view.registered_app(&subject.app)?;
                let state = view.subject(&subject.app, &subject.user, &StateQuery::decisions())?;
                let ended = |l: &Lifetime| {
                    matches!(l, Lifetime::Session { session: s, .. } if *s == session)
                };
                let lapses = machine::plan_lapse(&state.records, clock.now_ms(), ended);
                // The session's end, then each grant that lapsed with it.
                let mut audit = vec![actor.entry(&subject, None, AuditAction::SessionEnded)];
                let mut changes = Vec::new();
                push_lapses(&actor, &subject, lapses, &mut changes, &mut audit);
                Ok((
                    WriteSet {
                        changes,
                        audit,
                        ..WriteSet::default()
                    },
                    (),
                ))
            })
            .await?;
        Ok(written(committed, ()))
    }

    /// Lapses every grant whose timer is due at `now_ms` (at most a batch);
    /// returns how many lapsed. Stale timers (the decision changed since
    /// they were set) are just removed. A cluster-wide duty: it commits
    /// only on the daemon that holds the duties (see `Store::submit_duty`).
    pub async fn expire_due(&self, now_ms: u64) -> Result<Written<usize>, BrokerError> {
        let (committed, lapsed) = self
            .store
            .write_duty(move |view: &dyn View| {
                let timers = view.due_timers(now_ms, EXPIRY_BATCH)?;
                let mut subjects: Vec<Subject> = timers.iter().map(|t| t.subject.clone()).collect();
                subjects.sort();
                subjects.dedup();
                let (mut changes, mut audit) = (Vec::new(), Vec::new());
                let system = Actor::system();
                for subject in subjects {
                    let state =
                        view.subject(&subject.app, &subject.user, &StateQuery::decisions())?;
                    let lapses = machine::plan_lapse(&state.records, now_ms, |_| false);
                    push_lapses(&system, &subject, lapses, &mut changes, &mut audit);
                }
                let lapsed = changes.len();
                Ok((
                    WriteSet {
                        changes,
                        cleared_timers: timers,
                        audit,
                        ..WriteSet::default()
                    },
                    lapsed,
                ))
            })
            .await?;
        Ok(written(committed, lapsed))
    }

    /// When the next grant lapses (Unix ms), if any grant is timed.
    pub fn next_lapse(&self) -> Result<Option<u64>, BrokerError> {
        Ok(self.store.next_timer()?)
    }

    /// Runs a decision-changing plan for one subject on the writer. Grants
    /// that lapsed but whose lapse is not recorded yet are lapsed first (so
    /// the log stays a chain of states), and the plan sees them as never
    /// asked; the plan's grants get `w.lifetime`. The audit records go into
    /// the same commit.
    async fn write_decisions<T, F>(
        &self,
        s: &Subject,
        w: DecisionWrite,
        plan: F,
    ) -> Result<Written<T>, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(Planning<'_>) -> Result<(Vec<Change>, T), DomainError> + Send + 'static,
    {
        let subject = s.clone();
        let policy = self.policy;
        let nag_policy = policy.nag;
        let clock = self.clock.clone();
        let (committed, value) = self
            .store
            .write(move |view: &dyn View| {
                let app = view.registered_app(&subject.app)?;
                // Only an answer to a popup reads the privacy answer and the
                // anti-nag state (settings changes and removals do not).
                let answer = match w.audit {
                    AuditShape::Answer(scope, answer) => Some((scope, answer)),
                    _ => None,
                };
                // An answer reads what its verdict reads (the scope, and
                // location with background location: the only scopes its
                // plan changes), with point reads instead of a scan of every
                // scope of the user. Grants of other scopes that lapsed are
                // recorded by their own timers' expiry writes, as they are
                // when no answer comes. Settings changes and removals read
                // every scope: they answer with (or remove) all of them.
                let query = match answer {
                    Some((scope, _)) => StateQuery::for_verdicts(&app, &[scope], &policy),
                    None => StateQuery::decisions(),
                };
                let state = view.subject(&subject.app, &subject.user, &query)?;
                let now_ms = clock.now_ms();
                let nag = match (answer, nag_policy) {
                    (Some((scope, answer)), Some(policy)) => {
                        let current = state.nag.get(&scope).copied();
                        let next = NagState::after_answer(current, scope, answer, policy, now_ms)?;
                        (next != current).then(|| (subject.clone(), scope, next))
                    }
                    _ => None,
                };
                let lapses = machine::plan_lapse(&state.records, now_ms, |_| false);
                // Lapsed grants (and background with a lapsed location) are
                // already gone from what the plan sees.
                let decisions = state.live_decisions(now_ms);
                let (planned, value) = plan(Planning {
                    app: &app,
                    state: &state,
                    decisions: &decisions,
                    now_ms,
                })?;
                let (mut changes, mut audit) = (Vec::new(), Vec::new());
                push_lapses(&Actor::system(), &subject, lapses, &mut changes, &mut audit);
                audit.extend(w.audit.entries(&w.actor, &subject, &planned));
                changes.extend(planned.into_iter().map(|c| (subject.clone(), c)));
                let forget = if w.forget_user_state {
                    vec![subject.clone()]
                } else {
                    Vec::new()
                };
                Ok((
                    WriteSet {
                        changes,
                        lifetime: w.lifetime,
                        audit,
                        nag,
                        forget,
                        ..WriteSet::default()
                    },
                    value,
                ))
            })
            .await?;
        Ok(written(committed, value))
    }
}

/// Recorded lapses of `s`: each a change, with its EXPIRED audit record by
/// `actor`, in order.
fn push_lapses(
    actor: &Actor,
    s: &Subject,
    lapses: Vec<Change>,
    changes: &mut Vec<(Subject, Change)>,
    audit: &mut Vec<AuditEntry>,
) {
    for change in lapses {
        audit.push(actor.entry(s, Some(change.scope), AuditAction::Expired));
        changes.push((s.clone(), change));
    }
}
