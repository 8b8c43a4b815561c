//! App registrations and imports: each a write job that the domain
//! validates against the current state.

use std::sync::Arc;

use super::{operator_entry, page_size, written, AppPage, Broker, BrokerError, Read, Written};
use crate::{
    domain::{
        import::{self, ImportRecord},
        machine, App, AppId, AppKind, AuditEntry, Cause, Declarations, DomainError, Lifetime,
        OperatorAction, Principal, RawDeclarations, StateQuery, Subject,
    },
    store::{AppWrite, DecisionRow, TxnError, View, WriteSet},
};

/// Decisions per write job while importing (a user's rows never split).
const IMPORT_BATCH: usize = 1024;

/// What an import did.
#[derive(Clone, Copy, Debug)]
pub struct Imported {
    /// App records in the import.
    pub apps: u64,
    /// Decision rows in the import (identical repeats once).
    pub decisions: u64,
    /// Decisions that changed.
    pub changed: u64,
    /// The revision of the import's last write.
    pub revision: u64,
}

impl Broker {
    /// Registers a new app; `action` names it in the audit trail
    /// (RegisterApp, or Import).
    pub async fn register_app(
        &self,
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
        who: &Principal,
        action: OperatorAction,
    ) -> Result<Read<Arc<App>>, BrokerError> {
        let declarations = Declarations::parse(kind, raw)?;
        let audit = operator_entry(who, &id, action);
        self.write_app(audit, move |view| {
            let current = view.app(&id)?;
            Ok(App::register(id, kind, declarations, current.as_deref())?)
        })
        .await
    }

    /// Replaces an app's declarations; its kind cannot change. `action`
    /// names it in the audit trail (UpdateApp, or Import).
    pub async fn update_app(
        &self,
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
        who: &Principal,
        action: OperatorAction,
    ) -> Result<Read<Arc<App>>, BrokerError> {
        let declarations = Declarations::parse(kind, raw)?;
        let audit = operator_entry(who, &id, action);
        self.write_app(audit, move |view| {
            Ok(view.registered_app(&id)?.redeclare(kind, declarations)?)
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
        who: &Principal,
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
            .register_app(id.clone(), kind, raw.clone(), who, OperatorAction::Import)
            .await
        {
            Err(BrokerError::Domain(DomainError::AlreadyExists { .. })) => {
                self.update_app(id, kind, raw, who, OperatorAction::Import)
                    .await
            }
            other => other,
        }
    }

    /// An import: every record is checked ([`import::plan`]) before the
    /// first write; then the apps are registered (or their declarations
    /// replaced) and the decisions written in jobs of about [`IMPORT_BATCH`]
    /// rows (a user's rows never split).
    pub async fn import(
        &self,
        records: impl IntoIterator<Item = Result<ImportRecord, DomainError>>,
        who: &Principal,
    ) -> Result<Imported, BrokerError> {
        let records = records.into_iter().map(|r| r.map_err(BrokerError::from));
        let plan = import::plan(records, |id| {
            Ok(self.store.app(id)?.map(|app| app.declarations.clone()))
        })?;
        let mut done = Imported {
            apps: plan.apps.len() as u64,
            decisions: plan.rows.len() as u64,
            changed: 0,
            revision: self.store.revision(),
        };
        for (id, kind, raw) in plan.apps {
            done.revision = self.upsert_app(id, kind, raw, who).await?.revision;
        }
        let mut batch: Vec<DecisionRow> = Vec::new();
        let mut rows = plan.rows.into_iter().peekable();
        while let Some(row) = rows.next() {
            batch.push(row);
            let user_ends = rows.peek().is_none_or(|next| {
                batch
                    .last()
                    .is_some_and(|l| l.app != next.app || l.user != next.user)
            });
            if user_ends && (batch.len() >= IMPORT_BATCH || rows.peek().is_none()) {
                let written = self
                    .import_decisions(std::mem::take(&mut batch), who)
                    .await?;
                done.changed += written.value;
                done.revision = written.revision;
            }
        }
        Ok(done)
    }

    /// Sets stored decisions (imports): rows already in place change nothing,
    /// each differing one is an OPERATOR event. A user's rows are planned
    /// together; the result must keep background => location granted.
    pub async fn import_decisions(
        &self,
        rows: Vec<DecisionRow>,
        who: &Principal,
    ) -> Result<Written<u64>, BrokerError> {
        let mut apps: Vec<&AppId> = rows.iter().map(|r| &r.app).collect();
        apps.dedup();
        let audit: Vec<AuditEntry> = apps
            .into_iter()
            .map(|app| operator_entry(who, app, OperatorAction::Import))
            .collect();
        let (committed, changed) = self
            .store
            .write(move |view: &dyn View| {
                let mut changes = Vec::new();
                let mut lifetimes = std::collections::BTreeMap::new();
                // Each user is planned once, with all of its rows in this
                // batch, even if they were not adjacent: planning a user twice
                // against the same committed state would break the log chain.
                let mut users: Vec<(Subject, Vec<&DecisionRow>)> = Vec::new();
                let mut index: std::collections::HashMap<Subject, usize> =
                    std::collections::HashMap::new();
                for row in &rows {
                    let key = Subject {
                        app: row.app.clone(),
                        user: row.user.clone(),
                    };
                    match index.get(&key) {
                        Some(&i) => users[i].1.push(row),
                        None => {
                            index.insert(key.clone(), users.len());
                            users.push((key, vec![row]));
                        }
                    }
                }
                for (subject, group) in users {
                    let app = view.registered_app(&subject.app)?;
                    let before = view
                        .subject(&subject.app, &subject.user, &StateQuery::decisions())?
                        .stored_decisions();
                    let wanted: Vec<_> = group.iter().map(|r| (r.scope, r.state)).collect();
                    for change in machine::plan_import(&app, &subject.user, &before, &wanted)? {
                        changes.push((subject.clone(), change));
                    }
                    for r in group {
                        if r.lifetime != Lifetime::Permanent {
                            lifetimes.insert((subject.clone(), r.scope), r.lifetime.clone());
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

    /// Deletes an app and every user's decisions for it.
    pub async fn delete_app(
        &self,
        id: AppId,
        who: &Principal,
    ) -> Result<Written<u64>, BrokerError> {
        let audit = operator_entry(who, &id, OperatorAction::DeleteApp);
        let (committed, revoked) = self
            .store
            .write(move |view: &dyn View| {
                view.registered_app(&id)?;
                let mut changes = Vec::new();
                for (user, decisions) in view.app_decisions(&id)? {
                    let subject = Subject {
                        app: id.clone(),
                        user,
                    };
                    for change in machine::plan_forget(&decisions, Cause::Operator) {
                        changes.push((subject.clone(), change));
                    }
                }
                let revoked = changes.len() as u64;
                // Users' privacy answers and anti-nag state go with the
                // registration.
                let forget = view.subjects_with_user_state(&id)?;
                Ok((
                    WriteSet {
                        app: Some(AppWrite::Delete(id)),
                        changes,
                        forget,
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
