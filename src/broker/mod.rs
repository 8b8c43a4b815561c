//! The use cases: each gRPC call is one method here, composing the pure
//! domain with the store. Reads go straight to the store; every write is a
//! job the store runs on its single writer, so it reads and writes
//! atomically with respect to other writes.

mod error;

use std::{collections::BTreeMap, sync::Arc};

pub use error::BrokerError;

use crate::{
    domain::{
        gates::{self, Verdict},
        machine::{self, Answer, SettingItem, SettingsUpdate},
        rules::Target,
        Api, App, AppId, AppKind, Availability, Cause, Client, DecisionState, Declarations,
        DomainError, Event, Outcome, RawDeclarations, RuleSet, Scope, ScopeInfo, UserDecisions,
        UserId, CATALOG,
    },
    store::{AppWrite, DecisionRow, Store, TxnError, View, WriteSet},
};

/// Most apps one ListApps page returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Apps per ListApps page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;

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
}

impl Broker {
    pub fn new(store: Arc<dyn Store>, rules: RuleSet) -> Self {
        Self {
            store,
            rules: Arc::new(rules),
        }
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

    fn state(&self, s: &Subject, scope: Scope) -> Result<DecisionState, BrokerError> {
        Ok(self
            .store
            .decision(&s.app, &s.user, scope)?
            .map(|d| d.state)
            .unwrap_or_default())
    }

    /// wx.authorize for one scope.
    pub fn authorize(
        &self,
        s: &Subject,
        scope: Scope,
        client: &Client,
    ) -> Result<Read<Verdict>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let state = self.state(s, scope)?;
        let verdict = gates::evaluate(&app, scope, Target::Authorize, client, state, &self.rules);
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
        let state = self.state(s, scope)?;
        let explained = gates::explain(&app, scope, Target::Authorize, client, state, &self.rules);
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
    ) -> Result<Read<Vec<Verdict>>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let decisions = self.store.decisions(&s.app, &s.user)?;
        let verdicts = scopes
            .iter()
            .map(|&scope| {
                let state = decisions.get(&scope).copied().unwrap_or_default();
                gates::evaluate(&app, scope, Target::Authorize, client, state, &self.rules)
            })
            .collect();
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
    ) -> Result<Read<ApiVerdict>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let mut states = Vec::with_capacity(api.scopes().len());
        for &scope in api.scopes() {
            states.push((scope, self.state(s, scope)?));
        }
        let state_of = |scope| {
            states
                .iter()
                .find(|(s, _)| *s == scope)
                .map(|(_, st)| *st)
                .unwrap_or_default()
        };
        let verdicts = gates::evaluate_api(&app, &api, client, state_of, &self.rules);
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

    /// The user's answer to a popup.
    pub async fn record(
        &self,
        s: &Subject,
        scope: Scope,
        client: Client,
        answer: Answer,
    ) -> Result<Written<Recorded>, BrokerError> {
        let rules = self.rules.clone();
        self.write_decisions(s, move |app, decisions| {
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
        let decisions = self.store.decisions(&s.app, &s.user)?;
        Ok(Read {
            value: machine::auth_setting(&decisions),
            revision,
        })
    }

    /// The settings page (wx.openSetting).
    pub fn open_setting(&self, s: &Subject) -> Result<Read<SettingsPage>, BrokerError> {
        let revision = self.store.revision();
        let app = self.app(&s.app)?;
        let decisions = self.store.decisions(&s.app, &s.user)?;
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
    ) -> Result<Written<BTreeMap<Scope, bool>>, BrokerError> {
        self.write_decisions(s, move |app, decisions| {
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
    pub async fn remove_app(&self, s: &Subject) -> Result<Written<()>, BrokerError> {
        self.write_decisions(s, |_, decisions| {
            Ok((machine::plan_forget(decisions, Cause::AppRemoved), ()))
        })
        .await
    }

    /// Runs a decision-changing plan for one subject on the writer.
    async fn write_decisions<T, F>(&self, s: &Subject, plan: F) -> Result<Written<T>, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&App, &UserDecisions) -> Result<(Vec<crate::domain::Change>, T), DomainError>
            + Send
            + 'static,
    {
        let subject = s.clone();
        let (committed, value) = self
            .store
            .write(move |view: &dyn View| {
                let app = view
                    .app(&subject.app)?
                    .ok_or_else(|| DomainError::app_not_found(&subject.app))?;
                let decisions = view.decisions(&subject.app, &subject.user)?;
                let (changes, value) = plan(&app, &decisions)?;
                let changes = changes
                    .into_iter()
                    .map(|c| (subject.app.clone(), subject.user.clone(), c))
                    .collect();
                Ok((WriteSet { app: None, changes }, value))
            })
            .await?;
        Ok(Written {
            value,
            events: committed.events,
            revision: committed.revision,
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

    /// Registers a new app.
    pub async fn register_app(
        &self,
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
    ) -> Result<Read<Arc<App>>, BrokerError> {
        let declarations = Declarations::parse(kind, raw)?;
        self.write_app(move |view| {
            if view.app(&id)?.is_some() {
                return Err(DomainError::AlreadyExists {
                    message: format!("app {:?} is already registered", id.as_str()),
                }
                .into());
            }
            Ok(App {
                id,
                kind,
                declarations,
                revision: 0,
                updated_at_ms: 0,
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
    ) -> Result<Read<Arc<App>>, BrokerError> {
        let declarations = Declarations::parse(kind, raw)?;
        self.write_app(move |view| {
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
            Ok(App { id, kind, declarations, revision: 0, updated_at_ms: 0 })
        })
        .await
    }

    async fn write_app<F>(&self, make: F) -> Result<Read<Arc<App>>, BrokerError>
    where
        F: FnOnce(&dyn View) -> Result<App, TxnError> + Send + 'static,
    {
        let committed = self
            .store
            .submit(Box::new(move |view| {
                Ok(WriteSet {
                    app: Some(AppWrite::Put(make(view)?)),
                    changes: Vec::new(),
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
        page_size: usize,
    ) -> Result<Read<AppPage>, BrokerError> {
        let revision = self.store.revision();
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
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
        match self.register_app(id.clone(), kind, raw.clone()).await {
            Err(BrokerError::Domain(DomainError::AlreadyExists { .. })) => {
                self.update_app(id, kind, raw).await
            }
            other => other,
        }
    }

    /// Sets stored decisions (imports): rows already in place change nothing,
    /// each differing one is an OPERATOR event. A user's rows must arrive
    /// together; the result must keep background => location granted.
    pub async fn import_decisions(
        &self,
        rows: Vec<DecisionRow>,
    ) -> Result<Written<u64>, BrokerError> {
        let (committed, changed) = self
            .store
            .write(move |view: &dyn View| {
                let mut changes = Vec::new();
                let mut i = 0;
                while i < rows.len() {
                    let (app_id, user) = (rows[i].app.clone(), rows[i].user.clone());
                    let app = view
                        .app(&app_id)?
                        .ok_or_else(|| DomainError::app_not_found(&app_id))?;
                    let before = view.decisions(&app_id, &user)?;
                    let start = i;
                    while i < rows.len() && rows[i].app == app_id && rows[i].user == user {
                        i += 1;
                    }
                    let wanted: Vec<_> =
                        rows[start..i].iter().map(|r| (r.scope, r.state)).collect();
                    for change in machine::plan_import(&app, &user, &before, &wanted)? {
                        changes.push((app_id.clone(), user.clone(), change));
                    }
                }
                let changed = changes.len() as u64;
                Ok((WriteSet { app: None, changes }, changed))
            })
            .await?;
        Ok(Written {
            value: changed,
            events: committed.events,
            revision: committed.revision,
        })
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
    pub async fn delete_app(&self, id: AppId) -> Result<Written<u64>, BrokerError> {
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
                    },
                    revoked,
                ))
            })
            .await?;
        Ok(Written {
            value: revoked,
            events: committed.events,
            revision: committed.revision,
        })
    }
}
