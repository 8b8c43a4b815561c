//! Reads: each answers from one store read and the domain's pipeline, at
//! the revision read first (the answer reflects at least every change up
//! to it). What a read leaves behind (prompt audit records, renewed
//! one-time grants) is queued without waiting.

use std::collections::BTreeMap;

use super::{
    page_size, trail, Actor, ApiVerdict, Broker, BrokerError, Read, SettingsPage, Subject,
};
use crate::{
    domain::{
        authorize::{self, Question},
        gates::Step,
        machine, privacy, Api, AppKind, AuditAction, AuditQuery, Availability, Client,
        DecisionState, Lifetime, Outcome, Principal, Role, Scope, ScopeInfo, StateQuery, Target,
        Verdict, CATALOG,
    },
    store::{AuditPage, View, WriteSet},
};

impl Broker {
    /// wx.authorize for one scope.
    pub fn authorize(
        &self,
        s: &Subject,
        scope: Scope,
        client: &Client,
        who: &Principal,
    ) -> Result<Read<Verdict>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let state = self.subject_state(&app, s, &[scope])?;
        let now_ms = self.now_ms();
        let q = self.question(&app, &state, Target::Authorize, client, now_ms);
        let verdict = authorize::authorize(&q, scope);
        self.after_read(s, std::slice::from_ref(&verdict), who, client, now_ms);
        Ok(Read {
            value: verdict,
            revision,
        })
    }

    /// [`Broker::authorize`] with the checks each gate made: the same
    /// pipeline with a recorder. It leaves nothing behind.
    pub fn explain(
        &self,
        s: &Subject,
        scope: Scope,
        client: &Client,
    ) -> Result<Read<(Verdict, Vec<Step>)>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let state = self.subject_state(&app, s, &[scope])?;
        let q = self.question(&app, &state, Target::Authorize, client, self.now_ms());
        Ok(Read {
            value: authorize::explain(&q, scope),
            revision,
        })
    }

    /// wx.authorize for many scopes of one subject, answered in request order.
    pub fn batch_authorize(
        &self,
        s: &Subject,
        scopes: &[Scope],
        client: &Client,
        who: &Principal,
    ) -> Result<Read<Vec<Verdict>>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let state = self.subject_state(&app, s, scopes)?;
        let now_ms = self.now_ms();
        let q = self.question(&app, &state, Target::Authorize, client, now_ms);
        let verdicts: Vec<Verdict> = scopes
            .iter()
            .map(|&scope| authorize::authorize(&q, scope))
            .collect();
        self.after_read(s, &verdicts, who, client, now_ms);
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
        who: &Principal,
    ) -> Result<Read<ApiVerdict>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let state = self.subject_state(&app, s, api.scopes())?;
        let now_ms = self.now_ms();
        let name = api.name();
        let q = self.question(&app, &state, Target::Authorize, client, now_ms);
        let checked = authorize::check_api(&q, api)
            .ok_or_else(|| BrokerError::Internal(format!("interface {name} has no scopes")))?;
        self.after_read(s, &checked.verdicts, who, client, now_ms);
        Ok(Read {
            value: checked,
            revision,
        })
    }

    fn question<'a>(
        &'a self,
        app: &'a crate::domain::App,
        state: &'a crate::domain::SubjectState,
        target: Target<'a>,
        client: &'a Client,
        now_ms: u64,
    ) -> Question<'a> {
        Question {
            app,
            state,
            target,
            client,
            rules: &self.rules,
            policy: &self.policy,
            now_ms,
        }
    }

    /// What a read leaves behind, without waiting for it: prompts (shown or
    /// suppressed) recorded in the audit trail, and one-time grants in use
    /// kept alive (their idle timeout restarts once half of it has passed).
    /// Reads by observers (dashboards, audits) leave nothing: no prompt was
    /// shown, no grant is in use.
    fn after_read(
        &self,
        s: &Subject,
        verdicts: &[Verdict],
        who: &Principal,
        client: &Client,
        now: u64,
    ) {
        if who.role == Role::Observer {
            return;
        }
        let mut extend = Vec::new();
        for v in verdicts.iter().filter(|v| v.outcome == Outcome::Granted) {
            let Some(renewed) = v.lifetime.renewed(now, self.session_idle_ms) else {
                continue;
            };
            // Background location in use keeps location alive too (a lapsing
            // location takes background with it); the renewal job drops it
            // unless location is a live grant of the same session.
            if v.scope == Scope::UserLocationBackground {
                extend.push((s.clone(), Scope::UserLocation, renewed.clone()));
            }
            extend.push((s.clone(), v.scope, renewed));
        }
        if !extend.is_empty() {
            self.renew(extend);
        }
        if !self.audit_prompts {
            return;
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
                || Actor::new(&who.name, Some(client.clone())).entry(s, Some(v.scope), action);
            if let Some(batch) = self.prompt_log.push(key, now, entry) {
                self.write_prompts(batch);
            }
        }
    }

    /// Renews one-time grants in use, without waiting: a job that checks
    /// each against the stored grant (it may have changed since the read)
    /// with [`Lifetime::extends`], and writes only the renewals that hold.
    fn renew(&self, wanted: Vec<(Subject, Scope, Lifetime)>) {
        let n = wanted.len();
        let clock = self.clock.clone();
        let job = Box::new(move |view: &dyn View| {
            let now_ms = clock.now_ms();
            let mut renew = Vec::new();
            for (s, scope, lifetime) in wanted {
                let state = view.subject(&s.app, &s.user, &StateQuery::decisions())?;
                let current = state.records.get(&scope);
                if current.is_some_and(|d| {
                    d.state == DecisionState::Granted && lifetime.extends(&d.lifetime, now_ms)
                }) {
                    renew.push((s, scope, lifetime));
                }
            }
            Ok(WriteSet {
                renew,
                ..WriteSet::default()
            })
        });
        if let Err(e) = self.store.submit_detached(job) {
            tracing::warn!(error = %e, grants = n, "could not extend a one-time grant in use");
        }
    }

    /// Writes the buffered prompt audit records (the daemon's housekeeping
    /// tick, and shutdown, call this).
    pub fn flush_prompt_audit(&self) {
        let batch = self.prompt_log.take();
        if !batch.is_empty() {
            self.write_prompts(batch);
        }
    }

    fn write_prompts(&self, batch: Vec<crate::domain::AuditEntry>) {
        let n = batch.len();
        let set = WriteSet {
            audit: batch,
            ..WriteSet::default()
        };
        self.submit_detached(set, "prompt audit records were dropped", n);
    }

    /// One page of an app's audit trail.
    pub fn audit(
        &self,
        app: &crate::domain::AppId,
        query: &AuditQuery,
    ) -> Result<Read<AuditPage>, BrokerError> {
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

    /// wx.getSetting.
    pub fn get_setting(&self, s: &Subject) -> Result<Read<BTreeMap<Scope, bool>>, BrokerError> {
        let revision = self.store.revision();
        self.app(&s.app)?;
        let decisions = self.decisions_of(s)?.live_decisions(self.now_ms());
        Ok(Read {
            value: machine::auth_setting(&decisions),
            revision,
        })
    }

    /// The settings page (wx.openSetting).
    pub fn open_setting(&self, s: &Subject) -> Result<Read<SettingsPage>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let decisions = self.decisions_of(s)?.live_decisions(self.now_ms());
        let page = SettingsPage {
            items: machine::settings_page(&app, &decisions),
            auth_setting: machine::auth_setting(&decisions),
        };
        Ok(Read {
            value: page,
            revision,
        })
    }

    /// wx.getPrivacySetting: (needAuthorization, privacyContractName).
    pub fn get_privacy_setting(&self, s: &Subject) -> Result<Read<(bool, String)>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let Some(guide) = app.declarations.privacy.as_ref() else {
            // The hot path of apps without a guide reads nothing more.
            return Ok(Read {
                value: (false, String::new()),
                revision,
            });
        };
        let state = self.subject_state(&app, s, &[])?;
        Ok(Read {
            value: (
                privacy::need_authorization(&app, state.privacy.as_ref()),
                guide.name.clone(),
            ),
            revision,
        })
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
}
