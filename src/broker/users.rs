//! The user's own view across apps: listing one user's decisions, resetting
//! them all, erasing the user. Each reads the per-user index
//! ([`Store::user_apps`]), so the work grows with this user's apps only.

use super::{page_size, trail::Actor, Broker, BrokerError, Read, Written};
use crate::{
    domain::{
        users, AppBinding, AppId, AuditAction, AuditEntry, Cause, Decision, Principal, Scope,
        StateQuery, Subject, UserId,
    },
    store::{Erasure, Timer, View, WriteSet},
};

/// One page of a user's decisions: per app (in id order), the scopes a
/// reader sees as decided, with their stored record.
#[derive(Clone, Debug, Default)]
pub struct UserDecisionsPage {
    pub apps: Vec<(AppId, Vec<(Scope, Decision)>)>,
    /// The app to continue after, when more may follow.
    pub next: Option<AppId>,
}

/// What a reset did.
#[derive(Clone, Debug, Default)]
pub struct UserReset {
    /// Apps whose decisions were reset.
    pub apps: u64,
}

/// What an erasure did.
#[derive(Clone, Debug, Default)]
pub struct UserErased {
    /// Apps in which the user had stored state.
    pub apps: u64,
    /// Stored records the scrub rewrote to the pseudonym.
    pub rewritten: u64,
    /// The scrub failed: it stays pending and resumes when the store reopens.
    pub scrub_pending: bool,
}

impl Broker {
    /// One page of `user`'s decisions across the apps `binding` covers,
    /// after `after`, at most `requested` apps (0: the default); only
    /// `scope` when given.
    pub fn list_user(
        &self,
        user: &UserId,
        scope: Option<Scope>,
        after: Option<&AppId>,
        requested: usize,
        binding: &AppBinding,
    ) -> Result<Read<UserDecisionsPage>, BrokerError> {
        let revision = self.store.revision();
        let size = page_size(requested);
        let mut apps = self.store.user_apps(user, after, size + 1)?;
        let next = (apps.len() > size).then(|| {
            apps.truncate(size);
            apps.last().cloned()
        });
        let now_ms = self.now_ms();
        let mut page = UserDecisionsPage {
            apps: Vec::with_capacity(apps.len()),
            next: next.flatten(),
        };
        for app in apps.into_iter().filter(|a| binding.covers(a)) {
            let state = self.store.subject(&app, user, &StateQuery::decisions())?;
            let rows = users::listed(&state.records, now_ms, scope);
            if !rows.is_empty() {
                page.apps.push((app, rows));
            }
        }
        Ok(Read {
            value: page,
            revision,
        })
    }

    /// Every stored decision of `user` in the apps `who` covers back to
    /// never asked (USER_RESET), in one atomic write with one audit record
    /// per app. Privacy answers and anti-nag state stay.
    pub async fn reset_user(
        &self,
        user: &UserId,
        who: &Principal,
    ) -> Result<Written<UserReset>, BrokerError> {
        let user = user.clone();
        let binding = who.apps.clone();
        let actor = Actor::new(&who.name, None);
        let (committed, reset) = self
            .store
            .write(move |view: &dyn View| {
                let mut set = WriteSet::default();
                let mut reset = UserReset::default();
                for app in view.user_apps(&user)? {
                    if !binding.covers(&app) {
                        continue;
                    }
                    let subject = Subject {
                        app,
                        user: user.clone(),
                    };
                    if revoke_all(view, &subject, Cause::UserReset, &mut set)? {
                        set.audit
                            .push(actor.entry(&subject, None, AuditAction::UserReset));
                        reset.apps += 1;
                    }
                }
                Ok((set, reset))
            })
            .await?;
        tracing::info!(principal = %who.name, apps = reset.apps, decisions = committed.events.len(), "user reset");
        Ok(super::written(committed, reset))
    }

    /// Erases `user` everywhere: every decision revoked (USER_ERASED events,
    /// published with the real id), lifetimes and timers, privacy answers,
    /// anti-nag state and the index removed, in one atomic write that also
    /// commits the erasure marker; then the store rewrites the user id to a
    /// random pseudonym in the retained log and audit trail, and this
    /// returns once that is durable (or says it is pending).
    pub async fn erase_user(
        &self,
        user: &UserId,
        who: &Principal,
    ) -> Result<Written<UserErased>, BrokerError> {
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random)
            .map_err(|e| BrokerError::Internal(format!("no randomness for a pseudonym: {e}")))?;
        let pseudonym = users::pseudonym(random);
        let erasure = Erasure {
            user: user.clone(),
            pseudonym: pseudonym.clone(),
        };
        // Prompt records still buffered would be written after the scrub:
        // they go into this write instead, renamed.
        let buffered: Vec<AuditEntry> = self
            .prompt_log
            .take()
            .into_iter()
            .map(|mut e| {
                if e.user.as_ref() == Some(user) {
                    e.user = Some(pseudonym.clone());
                }
                e
            })
            .collect();
        let principal = who.name.clone();
        let (committed, apps) = self
            .store
            .write(move |view: &dyn View| {
                let user = erasure.user.clone();
                let mut set = WriteSet {
                    audit: buffered,
                    ..WriteSet::default()
                };
                let mut apps = 0u64;
                for app in view.user_apps(&user)? {
                    let subject = Subject {
                        app: app.clone(),
                        user: user.clone(),
                    };
                    revoke_all(view, &subject, Cause::UserErased, &mut set)?;
                    set.forget.push(subject);
                    set.audit.push(AuditEntry {
                        app,
                        user: Some(erasure.pseudonym.clone()),
                        scope: None,
                        action: AuditAction::UserErased,
                        principal: principal.clone(),
                        client: None,
                    });
                    apps += 1;
                }
                set.erasure = Some(erasure);
                Ok((set, apps))
            })
            .await?;
        let mut erased = UserErased {
            apps,
            ..UserErased::default()
        };
        match self.store.finish_erasures().await {
            Ok(n) => erased.rewritten = n,
            Err(e) => {
                // The marker is durable: the scrub resumes when the store
                // reopens (restart, or recovery after a failed write).
                tracing::error!(error = %e, "the erasure's rewrite of the retained log failed; it stays pending");
                erased.scrub_pending = true;
            }
        }
        // The user id is not logged: this line is about an erasure only.
        tracing::info!(principal = %who.name, apps, decisions = committed.events.len(), rewritten = erased.rewritten, pending = erased.scrub_pending, "user erased");
        Ok(super::written(committed, erased))
    }
}

/// Adds to `set` the revocation (with `cause`) of every stored decision of
/// `subject`, and the removal of their timers; returns whether there was
/// any. (An erasure's privacy answers and anti-nag state go through
/// `forget`.)
fn revoke_all(
    view: &dyn View,
    subject: &Subject,
    cause: Cause,
    set: &mut WriteSet,
) -> Result<bool, crate::store::TxnError> {
    let state = view.subject(&subject.app, &subject.user, &StateQuery::decisions())?;
    let changes = users::plan_user_reset(&state.records, cause);
    for (&scope, d) in &state.records {
        if let Some(expires_at_ms) = d.lifetime.expires_at_ms() {
            set.cleared_timers.push(Timer {
                expires_at_ms,
                subject: subject.clone(),
                scope,
            });
        }
    }
    let any = !changes.is_empty();
    set.changes
        .extend(changes.into_iter().map(|c| (subject.clone(), c)));
    Ok(any)
}
