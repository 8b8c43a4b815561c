//! The use cases: each gRPC call is one method here, composing the pure
//! domain with the store. Reads go straight to the store; every write is a
//! job the store runs on its single writer, so it reads and writes
//! atomically with respect to other writes.

mod error;
mod trail;

use std::{collections::BTreeMap, sync::Arc};

pub use error::BrokerError;
pub use trail::Actor;
use trail::{AuditShape, DecisionWrite, PromptLog};

/// A runtime asking again within this long while the same popup is up is
/// the same prompt: one audit record.
pub const PROMPT_AUDIT_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

use crate::{
    domain::{
        audit,
        gates::{self, Verdict},
        machine::{self, Answer, SettingItem, SettingsUpdate},
        privacy::{self, PrivacyState},
        rules::Target,
        Api, App, AppId, AppKind, AuditAction, AuditEntry, AuditQuery, Availability, Cause, Client,
        DecisionRecords, DecisionState, Declarations, DomainError, Event, Lifetime,
        LifetimeRequest, NagPolicy, NagState, OperatorAction, Outcome, RawDeclarations, Reason,
        Role, RuleSet, Scope, ScopeInfo, SessionId, UserDecisions, UserId, CATALOG,
    },
    store::{AppWrite, AuditPage, DecisionRow, Store, TxnError, View, WriteSet},
};

/// How long a one-time grant lasts without its session ending, by default.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(30 * 60);
/// After a user disagrees with a privacy guide, calls fail without a popup
/// this long, by default.
pub const DEFAULT_PRIVACY_GAP: std::time::Duration = std::time::Duration::from_secs(10);
/// Most due timers one expiry write handles.
const EXPIRY_BATCH: usize = 512;

/// Wall-clock Unix milliseconds: what grant lifetimes are measured in.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Most apps (ListApps) or audit records (ListAudit) one page returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Items per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// A page size as asked (0: the default), capped at [`MAX_PAGE_SIZE`].
pub fn page_size(requested: usize) -> usize {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// One (app, user) pair: the subject of every decision call.
#[derive(Clone, Debug)]
pub struct Subject {
    pub app: AppId,
    pub user: UserId,
}

/// An interface check: one verdict per scope plus the combined answer.
#[derive(Clone, Debug)]
pub struct ApiVerdict {
    pub api: Api,
    pub verdicts: Vec<Verdict>,
    pub outcome: Outcome,
    pub err_msg: String,
}

/// The result of a write that changes decisions.
#[derive(Clone, Debug)]
pub struct Written<T> {
    pub value: T,
    pub events: Vec<Event>,
    pub revision: u64,
}

/// A read and the revision it reflects (every change up to it is included).
#[derive(Clone, Debug)]
pub struct Read<T> {
    pub value: T,
    pub revision: u64,
}

/// The recorded answer to a popup.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub err_msg: String,
    pub state: DecisionState,
}

/// One page of apps and the id to continue after, if more follow.
#[derive(Clone, Debug)]
pub struct AppPage {
    pub apps: Vec<Arc<App>>,
    pub next: Option<AppId>,
}

/// The settings page.
#[derive(Clone, Debug)]
pub struct SettingsPage {
    pub items: Vec<SettingItem>,
    pub auth_setting: BTreeMap<Scope, bool>,
}

/// The broker: cheap to clone, shared by every service.
#[derive(Clone)]
pub struct Broker {
    store: Arc<dyn Store>,
    rules: Arc<RuleSet>,
    session_idle_ms: u64,
    privacy_gap_ms: u64,
    nag: Option<NagPolicy>,
    audit_prompts: bool,
    prompt_log: Arc<PromptLog>,
}

impl Broker {
    pub fn new(store: Arc<dyn Store>, rules: RuleSet) -> Self {
        Self {
            store,
            rules: Arc::new(rules),
            session_idle_ms: DEFAULT_SESSION_IDLE_TIMEOUT.as_millis() as u64,
            privacy_gap_ms: DEFAULT_PRIVACY_GAP.as_millis() as u64,
            nag: None,
            audit_prompts: true,
            prompt_log: Arc::new(PromptLog::new(PROMPT_AUDIT_WINDOW.as_millis() as u64)),
        }
    }

    /// The anti-nag policy (off: `None`, the default).
    pub fn with_nag_policy(mut self, policy: Option<NagPolicy>) -> Self {
        self.nag = policy;
        self
    }

    /// Whether prompts shown (and suppressed) go into the audit trail.
    pub fn with_prompt_audit(mut self, on: bool) -> Self {
        self.audit_prompts = on;
        self
    }

    /// What a read leaves behind, without waiting for it: the anti-nag
    /// policy applied to PROMPT verdicts, prompts (shown or suppressed)
    /// recorded in the audit trail, and one-time grants in use kept alive
    /// (their idle timeout restarts once half of it has passed).
    fn after_read(
        &self,
        s: &Subject,
        target: Target<'_>,
        verdicts: &mut [Verdict],
        who: (&str, Role),
        client: &Client,
    ) -> Result<(), BrokerError> {
        let (principal, role) = who;
        let now = now_ms();
        for v in verdicts.iter_mut().filter(|v| v.outcome == Outcome::Prompt) {
            if self.nag.is_some() {
                let nag = self.store.nag(&s.app, &s.user, v.scope)?;
                *v = audit::embargo(v.clone(), target, nag.as_ref(), now);
            }
        }
        // Reads by observers (dashboards, audits) leave nothing behind: no
        // prompt was shown, no grant is in use.
        if role == Role::Observer {
            return Ok(());
        }
        let mut extend = Vec::new();
        for v in verdicts.iter().filter(|v| v.outcome == Outcome::Granted) {
            let Some(renewed) = v.lifetime.renewed(now, self.session_idle_ms) else {
                continue;
            };
            // Background location in use keeps location alive too (a lapsing
            // location takes background with it); the writer ignores it
            // unless it is a grant of the same session.
            if v.scope == Scope::UserLocationBackground {
                extend.push((
                    s.app.clone(),
                    s.user.clone(),
                    Scope::UserLocation,
                    renewed.clone(),
                ));
            }
            extend.push((s.app.clone(), s.user.clone(), v.scope, renewed));
        }
        if !extend.is_empty() {
            let job = Box::new(move |_: &dyn View| {
                Ok(WriteSet {
                    extend,
                    ..WriteSet::default()
                })
            });
            if let Err(e) = self.store.submit_detached(job) {
                tracing::warn!(error = %e, "could not extend a one-time grant in use");
            }
        }
        if !self.audit_prompts {
            return Ok(());
        }
        for v in verdicts
            .iter()
            .filter(|v| matches!(v.outcome, Outcome::Prompt | Outcome::Embargoed))
        {
            let action = match v.outcome {
                Outcome::Embargoed => AuditAction::PromptSuppressed,
                _ => AuditAction::PromptShown,
            };
            // The record is built only for a prompt not seen within the
            // window: repeats and every other answer allocate nothing for it.
            let key = trail::prompt_key(s, v.scope, &action);
            let entry =
                || Actor::new(principal, Some(client.clone())).entry(s, Some(v.scope), action);
            if let Some(batch) = self.prompt_log.push(key, now, entry) {
                self.write_prompts(batch);
            }
        }
        Ok(())
    }

    /// Writes the buffered prompt audit records (the daemon's housekeeping
    /// tick, and shutdown, call this).
    pub fn flush_prompt_audit(&self) {
        let batch = self.prompt_log.take();
        if !batch.is_empty() {
            self.write_prompts(batch);
        }
    }

    fn write_prompts(&self, batch: Vec<AuditEntry>) {
        let n = batch.len();
        let job = Box::new(move |_: &dyn View| {
            Ok(WriteSet {
                audit: batch,
                ..WriteSet::default()
            })
        });
        if let Err(e) = self.store.submit_detached(job) {
            tracing::warn!(error = %e, records = n, "prompt audit records were dropped");
        }
    }

    /// One page of an app's audit trail.
    pub fn audit(&self, app: &AppId, query: &AuditQuery) -> Result<Read<AuditPage>, BrokerError> {
        // The trail outlives the registration: no check that the app exists.
        let revision = self.store.revision();
        let query = AuditQuery {
            limit: page_size(query.limit),
            ..query.clone()
        };
        Ok(Read {
            value: self.store.audit(app, &query)?,
            revision,
        })
    }

    /// How long calls fail without a popup after a privacy disagreement.
    pub fn with_privacy_gap(mut self, gap: std::time::Duration) -> Self {
        self.privacy_gap_ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The user's privacy answer, read only for apps that have a guide (the
    /// hot path of every other app pays nothing).
    fn privacy_of(&self, app: &App, s: &Subject) -> Result<Option<PrivacyState>, BrokerError> {
        if app.declarations.privacy.is_none() {
            return Ok(None);
        }
        Ok(self.store.privacy(&s.app, &s.user)?)
    }

    /// The privacy gate for one scope, before the scope gates.
    fn privacy_gate(
        &self,
        app: &App,
        scope: Scope,
        target: Target<'_>,
        state: DecisionState,
        answer: Option<&PrivacyState>,
    ) -> Option<Verdict> {
        privacy::gate(
            app,
            scope,
            target,
            state,
            answer,
            now_ms(),
            self.privacy_gap_ms,
        )
    }

    /// One scope's answer: the privacy gate first, then the scope gates; an
    /// answer from a stored grant carries the grant's lifetime.
    fn verdict(
        &self,
        app: &App,
        scope: Scope,
        target: Target<'_>,
        client: &Client,
        (state, lifetime): (DecisionState, Lifetime),
        answer: Option<&PrivacyState>,
    ) -> Verdict {
        self.privacy_gate(app, scope, target, state, answer)
            .unwrap_or_else(|| {
                with_lifetime(
                    gates::evaluate(app, scope, target, client, state, &self.rules),
                    lifetime,
                )
            })
    }

    /// How long one-time grants last when their session does not end.
    pub fn with_session_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.session_idle_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    fn app(&self, id: &AppId) -> Result<Arc<App>, BrokerError> {
        self.store
            .app(id)?
            .ok_or_else(|| DomainError::app_not_found(id).into())
    }

    /// The state a reader sees now, and the lifetime of a live grant.
    fn state(&self, s: &Subject, scope: Scope) -> Result<(DecisionState, Lifetime), BrokerError> {
        let now = now_ms();
        let decision = self.store.decision(&s.app, &s.user, scope)?;
        if scope == Scope::UserLocationBackground
            && decision
                .as_ref()
                .is_some_and(|d| d.state == DecisionState::Granted)
            && machine::location_lapsed(
                self.store
                    .decision(&s.app, &s.user, Scope::UserLocation)?
                    .as_ref(),
                now,
            )
        {
            return Ok((DecisionState::NotDetermined, Lifetime::Permanent));
        }
        Ok(match decision {
            Some(d) if d.effective_state(now) != DecisionState::NotDetermined => {
                (d.state, d.lifetime)
            }
            _ => (DecisionState::NotDetermined, Lifetime::Permanent),
        })
    }

    /// What readers see now: lapsed grants are gone.
    fn live_decisions(&self, s: &Subject) -> Result<(UserDecisions, DecisionRecords), BrokerError> {
        let records = self.store.records(&s.app, &s.user)?;
        Ok((machine::effective(&records, now_ms()), records))
    }

    /// wx.authorize for one scope.
    pub fn authorize(
        &self,
        s: &Subject,
        scope: Scope,
        client: &Client,
        who: (&str, Role),
    ) -> Result<Read<Verdict>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let stored = self.state(s, scope)?;
        let answer = self.privacy_of(&app, s)?;
        let target = Target::Authorize;
        let verdict = self.verdict(&app, scope, target, client, stored, answer.as_ref());
        let mut verdicts = [verdict];
        self.after_read(s, Target::Authorize, &mut verdicts, who, client)?;
        let [verdict] = verdicts;
        Ok(Read {
            value: verdict,
            revision,
        })
    }

    /// [`Broker::authorize`] with the checks each gate made.
    pub fn explain(
        &self,
        s: &Subject,
        scope: Scope,
        client: &Client,
    ) -> Result<Read<(Verdict, Vec<gates::Step>)>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let (state, lifetime) = self.state(s, scope)?;
        let answer = self.privacy_of(&app, s)?;
        let explained =
            match self.privacy_gate(&app, scope, Target::Authorize, state, answer.as_ref()) {
                Some(verdict) => {
                    let step = gates::Step {
                        gate: 0,
                        check: format!(
                            "the privacy guide covers {scope} and the user agreed to version {}",
                            app.privacy_version
                        ),
                        passed: false,
                    };
                    (verdict, vec![step])
                }
                None => {
                    let (verdict, steps) =
                        gates::explain(&app, scope, Target::Authorize, client, state, &self.rules);
                    (with_lifetime(verdict, lifetime), steps)
                }
            };
        Ok(Read {
            value: explained,
            revision,
        })
    }

    /// wx.authorize for many scopes of one subject, answered in request order.
    pub fn batch_authorize(
        &self,
        s: &Subject,
        scopes: &[Scope],
        client: &Client,
        who: (&str, Role),
    ) -> Result<Read<Vec<Verdict>>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let (decisions, records) = self.live_decisions(s)?;
        let answer = self.privacy_of(&app, s)?;
        let mut verdicts = scopes
            .iter()
            .map(|&scope| {
                let state = decisions.get(&scope).copied().unwrap_or_default();
                let stored = (state, lifetime_of(&records, &decisions, scope));
                let target = Target::Authorize;
                self.verdict(&app, scope, target, client, stored, answer.as_ref())
            })
            .collect::<Vec<_>>();
        self.after_read(s, Target::Authorize, &mut verdicts, who, client)?;
        Ok(Read {
            value: verdicts,
            revision,
        })
    }

    /// Whether a gated interface may run now.
    pub fn check_api(
        &self,
        s: &Subject,
        api: Api,
        client: &Client,
        who: (&str, Role),
    ) -> Result<Read<ApiVerdict>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let answer = self.privacy_of(&app, s)?;
        let mut verdicts = api
            .scopes()
            .iter()
            .map(|&scope| {
                let stored = self.state(s, scope)?;
                let target = Target::Api(&api);
                Ok(self.verdict(&app, scope, target, client, stored, answer.as_ref()))
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        self.after_read(s, Target::Api(&api), &mut verdicts, who, client)?;
        let decisive = gates::most_restrictive(&verdicts).ok_or_else(|| {
            BrokerError::Internal(format!("interface {} has no scopes", api.name()))
        })?;
        let (outcome, err_msg) = (decisive.outcome, decisive.err_msg.clone());
        Ok(Read {
            value: ApiVerdict {
                api,
                verdicts,
                outcome,
                err_msg,
            },
            revision,
        })
    }

    /// The user's answer to a popup; an ALLOW may carry a lifetime.
    pub async fn record(
        &self,
        s: &Subject,
        scope: Scope,
        client: Client,
        answer: Answer,
        lifetime: LifetimeRequest,
        actor: &Actor,
    ) -> Result<Written<Recorded>, BrokerError> {
        let rules = self.rules.clone();
        let lifetime = lifetime.resolve(now_ms(), self.session_idle_ms)?;
        let gap_ms = self.privacy_gap_ms;
        let w = DecisionWrite {
            lifetime,
            forget_user_state: false,
            actor: actor.clone(),
            audit: AuditShape::Answer(scope, answer),
        };
        self.write_decisions(s, w, move |app, decisions, privacy_answer| {
            let stored = decisions.get(&scope).copied().unwrap_or_default();
            privacy::check_answer(app, scope, answer, stored, privacy_answer, now_ms(), gap_ms)?;
            let plan = machine::plan_answer(app, decisions, scope, &client, &rules, answer)?;
            let state = plan
                .changes
                .iter()
                .rev()
                .find(|c| c.scope == scope)
                .map_or_else(
                    || decisions.get(&scope).copied().unwrap_or_default(),
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

    /// wx.getSetting.
    pub fn get_setting(&self, s: &Subject) -> Result<Read<BTreeMap<Scope, bool>>, BrokerError> {
        let revision = self.store.revision();
        self.app(&s.app)?;
        let (decisions, _) = self.live_decisions(s)?;
        Ok(Read {
            value: machine::auth_setting(&decisions),
            revision,
        })
    }

    /// The settings page (wx.openSetting).
    pub fn open_setting(&self, s: &Subject) -> Result<Read<SettingsPage>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let (decisions, _) = self.live_decisions(s)?;
        let page = SettingsPage {
            items: machine::settings_page(&app, &decisions),
            auth_setting: machine::auth_setting(&decisions),
        };
        Ok(Read {
            value: page,
            revision,
        })
    }

    /// The user changed the settings page; returns the new authSetting.
    pub async fn update_setting(
        &self,
        s: &Subject,
        update: SettingsUpdate,
        lifetime: LifetimeRequest,
        actor: &Actor,
    ) -> Result<Written<BTreeMap<Scope, bool>>, BrokerError> {
        let lifetime = lifetime.resolve(now_ms(), self.session_idle_ms)?;
        let w = DecisionWrite {
            lifetime,
            forget_user_state: false,
            actor: actor.clone(),
            audit: AuditShape::PerChange(AuditAction::SettingsChanged),
        };
        self.write_decisions(s, w, move |app, decisions, _| {
            let changes = machine::plan_settings_update(app, decisions, &update)?;
            let mut after = decisions.clone();
            for c in &changes {
                after.insert(c.scope, c.new);
            }
            Ok((changes, machine::auth_setting(&after)))
        })
        .await
    }

    /// The user deleted the mini program: forget every decision.
    pub async fn remove_app(&self, s: &Subject, actor: &Actor) -> Result<Written<()>, BrokerError> {
        // The privacy answer and anti-nag state go too: deleting the mini
        // program forgets them.
        let w = DecisionWrite {
            lifetime: Lifetime::Permanent,
            forget_user_state: true,
            actor: actor.clone(),
            audit: AuditShape::Subject(AuditAction::AppRemoved),
        };
        self.write_decisions(s, w, |_, decisions, _| {
            Ok((machine::plan_forget(decisions, Cause::AppRemoved), ()))
        })
        .await
    }

    /// wx.getPrivacySetting: (needAuthorization, privacyContractName).
    pub fn get_privacy_setting(&self, s: &Subject) -> Result<Read<(bool, String)>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let answer = self.privacy_of(&app, s)?;
        let name = app
            .declarations
            .privacy
            .as_ref()
            .map(|g| g.name.clone())
            .unwrap_or_default();
        Ok(Read {
            value: (privacy::need_authorization(&app, answer.as_ref()), name),
            revision,
        })
    }

    /// The user's answer to the privacy agreement, for the guide's current
    /// version; returns (needAuthorization, version).
    pub async fn record_privacy_decision(
        &self,
        s: &Subject,
        agree: bool,
        actor: &Actor,
    ) -> Result<Read<(bool, u64)>, BrokerError> {
        let subject = s.clone();
        let audit = vec![actor.entry(s, None, AuditAction::PrivacyAnswered { agreed: agree })];
        let (committed, value) = self
            .store
            .write(move |view: &dyn View| {
                let app = view
                    .app(&subject.app)?
                    .ok_or_else(|| DomainError::app_not_found(&subject.app))?;
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
                    at_ms: now_ms(),
                };
                let need = privacy::need_authorization(&app, Some(&answer));
                Ok((
                    WriteSet {
                        privacy: Some((subject.app, subject.user, Some(answer))),
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
        actor: &Actor,
    ) -> Result<Written<()>, BrokerError> {
        let subject = s.clone();
        let actor = actor.clone();
        let (committed, ()) = self
            .store
            .write(move |view: &dyn View| {
                view.app(&subject.app)?
                    .ok_or_else(|| DomainError::app_not_found(&subject.app))?;
                let records = view.records(&subject.app, &subject.user)?;
                let ended = |l: &Lifetime| {
                    matches!(l, Lifetime::Session { session: s, .. } if *s == session)
                };
                let lapses = machine::plan_lapse(&records, now_ms(), ended);
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
    /// they were set) are just removed.
    pub async fn expire_due(&self, now_ms: u64) -> Result<Written<usize>, BrokerError> {
        let (committed, lapsed) = self
            .store
            .write(move |view: &dyn View| {
                let timers = view.due_timers(now_ms, EXPIRY_BATCH)?;
                let mut subjects: Vec<(AppId, UserId)> = timers
                    .iter()
                    .map(|t| (t.app.clone(), t.user.clone()))
                    .collect();
                subjects.sort();
                subjects.dedup();
                let (mut changes, mut audit) = (Vec::new(), Vec::new());
                let system = Actor::system();
                for (app, user) in subjects {
                    let records = view.records(&app, &user)?;
                    let subject = Subject { app, user };
                    let lapses = machine::plan_lapse(&records, now_ms, |_| false);
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
        F: FnOnce(
                &App,
                &UserDecisions,
                Option<&PrivacyState>,
            ) -> Result<(Vec<crate::domain::Change>, T), DomainError>
            + Send
            + 'static,
    {
        let subject = s.clone();
        let nag_policy = self.nag;
        let (committed, value) = self
            .store
            .write(move |view: &dyn View| {
                let app = view
                    .app(&subject.app)?
                    .ok_or_else(|| DomainError::app_not_found(&subject.app))?;
                // Only an answer to a popup is checked against the privacy
                // answer (settings changes and removals are not).
                let privacy_answer = match (&w.audit, &app.declarations.privacy) {
                    (AuditShape::Answer(..), Some(_)) => {
                        view.privacy(&subject.app, &subject.user)?
                    }
                    _ => None,
                };
                let now = now_ms();
                let nag = match (&w.audit, nag_policy) {
                    (AuditShape::Answer(scope, answer), Some(policy)) => {
                        let current = view.nag(&subject.app, &subject.user, *scope)?;
                        let next = NagState::after_answer(current, *scope, *answer, policy, now)?;
                        (next != current)
                            .then(|| (subject.app.clone(), subject.user.clone(), *scope, next))
                    }
                    _ => None,
                };
                let records = view.records(&subject.app, &subject.user)?;
                let lapses = machine::plan_lapse(&records, now, |_| false);
                // Lapsed grants (and background with a lapsed location) are
                // already gone from what the plan sees.
                let decisions = machine::effective(&records, now);
                let (planned, value) = plan(&app, &decisions, privacy_answer.as_ref())?;
                let (mut changes, mut audit) = (Vec::new(), Vec::new());
                push_lapses(&Actor::system(), &subject, lapses, &mut changes, &mut audit);
                audit.extend(w.audit.entries(&w.actor, &subject, &planned));
                changes.extend(
                    planned
                        .into_iter()
                        .map(|c| (subject.app.clone(), subject.user.clone(), c)),
                );
                let forget = w
                    .forget_user_state
                    .then(|| (subject.app.clone(), subject.user.clone()));
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

    /// The scope catalog, optionally only the scopes that exist for `kind`.
    pub fn scopes(&self, kind: Option<AppKind>) -> Read<Vec<&'static ScopeInfo>> {
        let revision = self.store.revision();
        let scopes = CATALOG
            .iter()
            .filter(|info| {
                kind.is_none_or(|k| info.scope.availability(k) != Availability::Unsupported)
            })
            .collect();
        Read {
            value: scopes,
            revision,
        }
    }

    /// Registers a new app.
    pub async fn register_app(
        &self,
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
        actor: &Actor,
    ) -> Result<Read<Arc<App>>, BrokerError> {
        self.register_app_as(id, kind, raw, actor, OperatorAction::RegisterApp)
            .await
    }

    async fn register_app_as(
        &self,
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
        actor: &Actor,
        action: OperatorAction,
    ) -> Result<Read<Arc<App>>, BrokerError> {
        let declarations = Declarations::parse(kind, raw)?;
        let audit = operator_entry(actor, &id, action);
        self.write_app(audit, move |view| {
            if view.app(&id)?.is_some() {
                return Err(DomainError::AlreadyExists {
                    message: format!("app {:?} is already registered", id.as_str()),
                }
                .into());
            }
            let privacy_version = privacy::next_version(None, 0, declarations.privacy.as_ref());
            Ok(App {
                id,
                kind,
                declarations,
                revision: 0,
                updated_at_ms: 0,
                privacy_version,
            })
        })
        .await
    }

    /// Replaces an app's declarations; its kind cannot change.
    pub async fn update_app(
        &self,
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
        actor: &Actor,
    ) -> Result<Read<Arc<App>>, BrokerError> {
        self.update_app_as(id, kind, raw, actor, OperatorAction::UpdateApp)
            .await
    }

    async fn update_app_as(
        &self,
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
        actor: &Actor,
        action: OperatorAction,
    ) -> Result<Read<Arc<App>>, BrokerError> {
        let declarations = Declarations::parse(kind, raw)?;
        let audit = operator_entry(actor, &id, action);
        self.write_app(audit, move |view| {
            let current = view.app(&id)?.ok_or_else(|| DomainError::app_not_found(&id))?;
            if current.kind != kind {
                return Err(DomainError::FailedPrecondition {
                    message: format!(
                        "app {:?} is registered as {:?}; the kind cannot change (delete and register it again)",
                        id.as_str(),
                        current.kind
                    ),
                }
                .into());
            }
            let privacy_version = privacy::next_version(
                current.declarations.privacy.as_ref(),
                current.privacy_version,
                declarations.privacy.as_ref(),
            );
            Ok(App { id, kind, declarations, revision: 0, updated_at_ms: 0, privacy_version })
        })
        .await
    }

    async fn write_app<F>(&self, audit: AuditEntry, make: F) -> Result<Read<Arc<App>>, BrokerError>
    where
        F: FnOnce(&dyn View) -> Result<App, TxnError> + Send + 'static,
    {
        let committed = self
            .store
            .submit(Box::new(move |view| {
                Ok(WriteSet {
                    app: Some(AppWrite::Put(make(view)?)),
                    audit: vec![audit],
                    ..WriteSet::default()
                })
            }))
            .await?;
        let app = committed
            .app
            .ok_or_else(|| BrokerError::Internal("app write returned no app".into()))?;
        Ok(Read {
            value: app,
            revision: committed.revision,
        })
    }

    pub fn get_app(&self, id: &AppId) -> Result<Read<Arc<App>>, BrokerError> {
        let revision = self.store.revision();
        Ok(Read {
            value: self.app(id)?,
            revision,
        })
    }

    /// One page of apps in id order; the token is the last id of the page.
    pub fn list_apps(
        &self,
        after: Option<&AppId>,
        requested: usize,
    ) -> Result<Read<AppPage>, BrokerError> {
        let revision = self.store.revision();
        let size = page_size(requested);
        // One extra tells whether another page follows.
        let mut apps = self.store.apps(after, size + 1)?;
        let next = (apps.len() > size).then(|| {
            apps.truncate(size);
            apps.last().map(|a| a.id.clone())
        });
        Ok(Read {
            value: AppPage {
                apps,
                next: next.flatten(),
            },
            revision,
        })
    }

    /// Registers an app, or replaces the declarations of one with the same
    /// id and kind (imports).
    pub async fn upsert_app(
        &self,
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
        actor: &Actor,
    ) -> Result<Read<Arc<App>>, BrokerError> {
        let declarations = Declarations::parse(kind, raw.clone())?;
        let revision = self.store.revision();
        if let Some(current) = self.store.app(&id)? {
            if current.kind == kind && current.declarations == declarations {
                return Ok(Read {
                    value: current,
                    revision,
                });
            }
        }
        match self
            .register_app_as(id.clone(), kind, raw.clone(), actor, OperatorAction::Import)
            .await
        {
            Err(BrokerError::Domain(DomainError::AlreadyExists { .. })) => {
                self.update_app_as(id, kind, raw, actor, OperatorAction::Import)
                    .await
            }
            other => other,
        }
    }

    /// Sets stored decisions (imports): rows already in place change nothing,
    /// each differing one is an OPERATOR event. A user's rows are planned
    /// together; the result must keep background => location granted.
    pub async fn import_decisions(
        &self,
        rows: Vec<DecisionRow>,
        actor: &Actor,
    ) -> Result<Written<u64>, BrokerError> {
        let mut apps: Vec<&AppId> = rows.iter().map(|r| &r.app).collect();
        apps.dedup();
        let audit: Vec<AuditEntry> = apps
            .into_iter()
            .map(|app| operator_entry(actor, app, OperatorAction::Import))
            .collect();
        let (committed, changed) = self
            .store
            .write(move |view: &dyn View| {
                let mut changes = Vec::new();
                let mut lifetimes = std::collections::BTreeMap::new();
                // Each user is planned once, with all of its rows in this
                // batch, even if they were not adjacent: planning a user twice
                // against the same committed state would break the log chain.
                let mut users: Vec<((AppId, UserId), Vec<&DecisionRow>)> = Vec::new();
                let mut index: std::collections::HashMap<(AppId, UserId), usize> =
                    std::collections::HashMap::new();
                for row in &rows {
                    let key = (row.app.clone(), row.user.clone());
                    match index.get(&key) {
                        Some(&i) => users[i].1.push(row),
                        None => {
                            index.insert(key.clone(), users.len());
                            users.push((key, vec![row]));
                        }
                    }
                }
                for ((app_id, user), group) in users {
                    let app = view
                        .app(&app_id)?
                        .ok_or_else(|| DomainError::app_not_found(&app_id))?;
                    let before = view.decisions(&app_id, &user)?;
                    let wanted: Vec<_> = group.iter().map(|r| (r.scope, r.state)).collect();
                    for change in machine::plan_import(&app, &user, &before, &wanted)? {
                        changes.push((app_id.clone(), user.clone(), change));
                    }
                    for r in group {
                        if r.lifetime != Lifetime::Permanent {
                            lifetimes.insert(
                                (app_id.clone(), user.clone(), r.scope),
                                r.lifetime.clone(),
                            );
                        }
                    }
                }
                let changed = changes.len() as u64;
                Ok((
                    WriteSet {
                        changes,
                        lifetimes,
                        audit,
                        ..WriteSet::default()
                    },
                    changed,
                ))
            })
            .await?;
        Ok(written(committed, changed))
    }

    /// Every stored decision after `after`, a page at a time (exports).
    pub fn decisions_after(
        &self,
        after: Option<&DecisionRow>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>, BrokerError> {
        Ok(self.store.decisions_after(after, limit)?)
    }

    /// Deletes an app and every user's decisions for it.
    pub async fn delete_app(&self, id: AppId, actor: &Actor) -> Result<Written<u64>, BrokerError> {
        let audit = operator_entry(actor, &id, OperatorAction::DeleteApp);
        let (committed, revoked) = self
            .store
            .write(move |view: &dyn View| {
                view.app(&id)?
                    .ok_or_else(|| DomainError::app_not_found(&id))?;
                let mut changes = Vec::new();
                for (user, decisions) in view.app_decisions(&id)? {
                    for change in machine::plan_forget(&decisions, Cause::Operator) {
                        changes.push((id.clone(), user.clone(), change));
                    }
                }
                let revoked = changes.len() as u64;
                Ok((
                    WriteSet {
                        app: Some(AppWrite::Delete(id)),
                        changes,
                        audit: vec![audit],
                        ..WriteSet::default()
                    },
                    revoked,
                ))
            })
            .await?;
        Ok(written(committed, revoked))
    }
}

fn written<T>(committed: crate::store::Committed, value: T) -> Written<T> {
    Written {
        value,
        events: committed.events,
        revision: committed.revision,
    }
}

/// The verdict with the lifetime of the grant it came from.
fn with_lifetime(mut verdict: Verdict, lifetime: Lifetime) -> Verdict {
    if verdict.outcome == Outcome::Granted && verdict.reason == Reason::StoredGrant {
        verdict.lifetime = lifetime;
    }
    verdict
}

/// The lifetime of a live grant of `scope`, permanent otherwise.
fn lifetime_of(records: &DecisionRecords, live: &UserDecisions, scope: Scope) -> Lifetime {
    match (live.get(&scope), records.get(&scope)) {
        (Some(DecisionState::Granted), Some(d)) => d.lifetime.clone(),
        _ => Lifetime::Permanent,
    }
}

/// Recorded lapses of `s`: each a change, with its EXPIRED audit record by
/// `actor`, in order.
fn push_lapses(
    actor: &Actor,
    s: &Subject,
    lapses: Vec<crate::domain::Change>,
    changes: &mut Vec<(AppId, UserId, crate::domain::Change)>,
    audit: &mut Vec<AuditEntry>,
) {
    for change in lapses {
        audit.push(actor.entry(s, Some(change.scope), AuditAction::Expired));
        changes.push((s.app.clone(), s.user.clone(), change));
    }
}

/// An operator action's audit record (about an app, no user).
fn operator_entry(actor: &Actor, app: &AppId, action: OperatorAction) -> AuditEntry {
    AuditEntry {
        app: app.clone(),
        user: None,
        scope: None,
        action: AuditAction::Operator(action),
        principal: actor.principal.clone(),
        client: None,
    }
}
