//! The whole verdict, in one place: from everything stored for one
//! (app, user) to what the runtime must do. Authorize, BatchAuthorize,
//! CheckApi, Explain and the popup-answer planner all run [`authorize`]'s
//! single path, so none of them can disagree with another.
//!
//! The order, for one scope:
//! 1. the live state: a lapsed grant reads as never asked, and background
//!    location goes with a lapsed location grant;
//! 2. the privacy gate ([`privacy::gate`]), before any scope gate;
//! 3. the five scope gates of SPEC section 4 ([`gates`]); a stored grant's
//!    answer carries the grant's lifetime;
//! 4. the anti-nag embargo: a PROMPT for a scope whose prompts were
//!    dismissed too often lately becomes EMBARGOED.

use std::collections::BTreeMap;

use super::{
    audit,
    gates::{self, Outcome, Reason, Step, Verdict},
    machine,
    privacy::{self, PrivacyState},
    rules::Target,
    Api, App, Client, DecisionRecords, DecisionState, Lifetime, NagPolicy, NagState, RuleSet,
    Scope, UserDecisions,
};

/// The operator's policy knobs a verdict depends on besides the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The anti-nag policy (off: `None`).
    pub nag: Option<NagPolicy>,
    /// After a user disagrees with a privacy guide, calls fail without a
    /// popup this long.
    pub privacy_gap_ms: u64,
}

/// Everything stored for one (app, user) that a verdict reads: decisions
/// with their lifetimes (as stored: lapses not yet recorded included), the
/// privacy answer and the anti-nag state. A store fills it with one call,
/// reading what a [`StateQuery`] asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectState {
    pub records: DecisionRecords,
    pub privacy: Option<PrivacyState>,
    pub nag: BTreeMap<Scope, NagState>,
}

/// Which parts of a [`SubjectState`] a verdict needs: reads stay as small
/// as the question (one key for a plain Authorize).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateQuery {
    /// `None`: every stored decision of the user; otherwise these scopes.
    pub scopes: Option<Vec<Scope>>,
    /// Read the privacy answer.
    pub privacy: bool,
    /// Read the anti-nag state of the scopes (every scope when `scopes` is
    /// `None`).
    pub nag: bool,
}

impl StateQuery {
    /// What verdicts for `scopes` of `app` read under `policy`. Background
    /// location also reads location (it goes with a lapsed location grant).
    pub fn for_verdicts(app: &App, scopes: &[Scope], policy: &Policy) -> Self {
        let mut wanted = Vec::with_capacity(scopes.len() + 1);
        for &scope in scopes {
            if scope == Scope::UserLocationBackground {
                wanted.push(Scope::UserLocation);
            }
            wanted.push(scope);
        }
        wanted.sort_unstable();
        wanted.dedup();
        Self {
            scopes: Some(wanted),
            privacy: app.declarations.privacy.is_some(),
            nag: policy.nag.is_some(),
        }
    }

    /// Every stored decision of the user, nothing else.
    pub fn decisions() -> Self {
        Self {
            scopes: None,
            privacy: false,
            nag: false,
        }
    }

    /// Everything stored for the user.
    pub fn everything(app: &App, policy: &Policy) -> Self {
        Self {
            scopes: None,
            privacy: app.declarations.privacy.is_some(),
            nag: policy.nag.is_some(),
        }
    }
}

impl SubjectState {
    /// The state a reader sees for `scope` at `now_ms`, and the lifetime of
    /// a live grant (permanent otherwise).
    pub fn live(&self, scope: Scope, now_ms: u64) -> (DecisionState, Lifetime) {
        let never = (DecisionState::NotDetermined, Lifetime::Permanent);
        let Some(d) = self.records.get(&scope) else {
            return never;
        };
        match d.effective_state(now_ms) {
            DecisionState::NotDetermined => never,
            DecisionState::Granted
                if scope == Scope::UserLocationBackground
                    && machine::location_lapsed(self.records.get(&Scope::UserLocation), now_ms) =>
            {
                never
            }
            DecisionState::Granted => (DecisionState::Granted, d.lifetime.clone()),
            DecisionState::Denied => (DecisionState::Denied, Lifetime::Permanent),
        }
    }

    /// Every live decision at `now_ms` ([`machine::effective`]).
    pub fn live_decisions(&self, now_ms: u64) -> UserDecisions {
        machine::effective(&self.records, now_ms)
    }

    /// Every decision as stored (lapses not yet recorded included).
    pub fn stored_decisions(&self) -> UserDecisions {
        self.records.iter().map(|(&s, d)| (s, d.state)).collect()
    }
}

/// What one verdict is about besides the scope: the same for every scope
/// of a BatchAuthorize or CheckApi.
#[derive(Clone, Copy, Debug)]
pub struct Question<'a> {
    pub app: &'a App,
    pub state: &'a SubjectState,
    pub target: Target<'a>,
    pub client: &'a Client,
    pub rules: &'a RuleSet,
    pub policy: &'a Policy,
    pub now_ms: u64,
}

/// The verdict for `scope`.
pub fn authorize(q: &Question<'_>, scope: Scope) -> Verdict {
    decide(q, scope, &mut |_, _, _| {})
}

/// [`authorize`], plus every check it made on the way: the same path with
/// a recorder, so an explanation cannot disagree with the verdict.
pub fn explain(q: &Question<'_>, scope: Scope) -> (Verdict, Vec<Step>) {
    let mut steps = Vec::new();
    let verdict = decide(q, scope, &mut |gate, passed, check| {
        steps.push(Step {
            gate,
            check: check(),
            passed,
        });
    });
    (verdict, steps)
}

/// An interface check: one verdict per scope plus the combined answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiVerdict {
    pub api: Api,
    pub verdicts: Vec<Verdict>,
    pub outcome: Outcome,
    pub err_msg: String,
}

/// Whether `api` may run: every scope it needs, the most restrictive
/// verdict deciding. `q.target` is ignored (it is the interface). `None`
/// for an interface without scopes (the catalog has none).
pub fn check_api(q: &Question<'_>, api: Api) -> Option<ApiVerdict> {
    let q = Question {
        target: Target::Api(&api),
        ..*q
    };
    let verdicts: Vec<Verdict> = api.scopes().iter().map(|&s| authorize(&q, s)).collect();
    let (outcome, err_msg) =
        gates::most_restrictive(&verdicts).map(|v| (v.outcome, v.err_msg.clone()))?;
    Some(ApiVerdict {
        api,
        verdicts,
        outcome,
        err_msg,
    })
}

/// Hears about each check: (gate, passed, description made on demand).
type Recorder<'a> = dyn FnMut(u8, bool, &dyn Fn() -> String) + 'a;

/// The one path. `note(gate, passed, check)` hears about each check, the
/// description built only when it asks.
fn decide(q: &Question<'_>, scope: Scope, note: &mut Recorder<'_>) -> Verdict {
    let (stored, lifetime) = q.state.live(scope, q.now_ms);
    let answer = q.state.privacy.as_ref();
    if let Some(verdict) = privacy::gate(
        q.app,
        scope,
        q.target,
        stored,
        answer,
        q.now_ms,
        q.policy.privacy_gap_ms,
    ) {
        note(0, false, &|| {
            format!(
                "the privacy guide covers {scope} and the user agreed to version {}",
                q.app.privacy_version
            )
        });
        return verdict;
    }
    let mut verdict = gates::walk(
        q.app, scope, q.target, q.client, stored, q.rules, &mut *note,
    );
    if verdict.outcome == Outcome::Granted && verdict.reason == Reason::StoredGrant {
        verdict.lifetime = lifetime;
    }
    if verdict.outcome != Outcome::Prompt || q.policy.nag.is_none() {
        return verdict;
    }
    let nag = q.state.nag.get(&scope);
    if let Some(n) = nag.filter(|n| n.embargoed(q.now_ms)) {
        note(5, false, &|| {
            format!(
                "the anti-nag policy suppresses prompts for {scope} until {} ms",
                n.embargo_until_ms
            )
        });
    }
    audit::embargo(verdict, q.target, nag, q.now_ms)
}

#[cfg(test)]
mod tests;
