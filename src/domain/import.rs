//! Imports, checked as a whole before anything is written: what an export
//! may hold, and the order in which it is written.

use std::collections::{btree_map::Entry, BTreeMap, HashMap};

use super::{
    AppId, AppKind, DecisionRow, DecisionState, Declarations, DomainError, Lifetime, LocationKind,
    RawDeclarations, Scope, UserId, CATALOG,
};

/// The format of exports. It moves when what an export holds changes, not
/// with the data dir's format: data format 3 changed only how audit records
/// are stored, and exports do not carry them, so an export from this build
/// still imports into a format-2 build.
pub const EXPORT_FORMAT: u64 = 2;

/// Most consecutive decision rows one (app, user) may have in an import.
pub const MAX_ROWS_PER_USER: usize = 2 * CATALOG.len();

/// The end of the range a protobuf `Timestamp` may hold
/// (10000-01-01T00:00:00Z), in Unix milliseconds: later grant expiries are
/// refused, not stored as grants that never lapse.
pub const MAX_TIMESTAMP_MS: u64 = 253_402_300_800_000;

/// One record of an import, parsed.
#[derive(Clone, Debug)]
pub enum ImportRecord {
    /// The export's header: its format.
    Header {
        format: u64,
    },
    App {
        id: AppId,
        kind: AppKind,
        raw: RawDeclarations,
    },
    Decision(DecisionRow),
    /// Records an import ignores (the event log).
    Ignored,
}

/// An import, checked as a whole: what to write, in order.
#[derive(Clone, Debug, Default)]
pub struct ImportPlan {
    pub apps: Vec<(AppId, AppKind, RawDeclarations)>,
    /// Sorted by (app, user, scope), one row per key.
    pub rows: Vec<DecisionRow>,
}

fn invalid(field: &str, message: String) -> DomainError {
    DomainError::InvalidArgument {
        field: field.into(),
        message,
    }
}

/// Checks every record of an import before anything is written: the
/// format is one this build reads, each app appears once (or again
/// identically), each decision's app is in the import or registered
/// (`registered` tells), a grant's scope is declared by that app, a grant's
/// expiry is within the Timestamp range, no user has more rows in a row than
/// an export holds, and no two rows for one (app, user, scope) disagree
/// (identical repeats are kept once).
pub fn plan<E: From<DomainError>>(
    records: impl IntoIterator<Item = Result<ImportRecord, E>>,
    mut registered: impl FnMut(&AppId) -> Result<Option<Declarations>, E>,
) -> Result<ImportPlan, E> {
    let mut apps = Vec::new();
    let mut declared: HashMap<AppId, (AppKind, Declarations)> = HashMap::new();
    // Keyed once: a row's ids live in its key only (an import of 1M rows
    // is held whole until it has been checked).
    let mut rows: BTreeMap<(AppId, UserId, Scope), (DecisionState, Lifetime)> = BTreeMap::new();
    let mut run: Option<((AppId, UserId), usize)> = None;
    for record in records {
        match record? {
            ImportRecord::Header { format } if format > EXPORT_FORMAT => {
                return Err(invalid(
                    "header.format",
                    format!(
                    "the export has format {format}; this consentd reads format {EXPORT_FORMAT}"
                ),
                )
                .into())
            }
            ImportRecord::Header { .. } | ImportRecord::Ignored => {}
            ImportRecord::App { id, kind, raw } => {
                let parsed = Declarations::parse(kind, raw.clone())?;
                match declared.get(&id) {
                    Some(seen) if *seen == (kind, parsed.clone()) => continue,
                    Some(_) => {
                        return Err(invalid(
                            "app",
                            format!("the import holds two different records for app {id}"),
                        )
                        .into())
                    }
                    None => {}
                }
                declared.insert(id.clone(), (kind, parsed));
                apps.push((id, kind, raw));
            }
            ImportRecord::Decision(row) => {
                let user_key = (row.app.clone(), row.user.clone());
                let count = match &run {
                    Some((key, n)) if *key == user_key => n + 1,
                    _ => 1,
                };
                if count > MAX_ROWS_PER_USER {
                    return Err(invalid(
                        "decision",
                        format!(
                            "more than {MAX_ROWS_PER_USER} decision rows in a row for app {} user {}: an export has one per scope",
                            row.app, row.user
                        ),
                    )
                    .into());
                }
                run = Some((user_key, count));
                let at = || {
                    format!(
                        "decision for app {} user {} scope {}",
                        row.app, row.user, row.scope
                    )
                };
                if let Some(ms) = row
                    .lifetime
                    .expires_at_ms()
                    .filter(|ms| *ms >= MAX_TIMESTAMP_MS)
                {
                    return Err(invalid(
                        "decision.expires_at",
                        format!(
                            "{}: decision.expires_at {ms} ms is beyond 9999-12-31, the range of a timestamp",
                            at()
                        ),
                    )
                    .into());
                }
                let value = (row.state, row.lifetime.clone());
                match rows.entry((row.app.clone(), row.user.clone(), row.scope)) {
                    Entry::Occupied(seen) if *seen.get() == value => {}
                    Entry::Occupied(seen) => {
                        return Err(invalid(
                            "decision",
                            format!(
                                "{}: two rows disagree ({:?} {:?} and {:?} {:?}); an export has one per key",
                                at(),
                                seen.get().0,
                                seen.get().1,
                                row.state,
                                row.lifetime
                            ),
                        )
                        .into())
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(value);
                    }
                }
            }
        }
    }
    // Every row's app, and every grant's declaration.
    let mut checked: HashMap<AppId, Declarations> = HashMap::new();
    for ((app, user, scope), (state, _)) in &rows {
        let declarations = match checked.get(app) {
            Some(d) => d,
            None => {
                let found = match declared.get(app) {
                    Some((_, d)) => Some(d.clone()),
                    None => registered(app)?,
                };
                let Some(d) = found else {
                    return Err(DomainError::NotFound {
                        message: format!(
                            "decision for app {app} user {user}: the app is neither in the import nor registered"
                        ),
                    }
                    .into());
                };
                checked.entry(app.clone()).or_insert(d)
            }
        };
        if *state != DecisionState::Granted {
            continue;
        }
        let location = scope.info().location;
        let undeclared = (location != LocationKind::None && declarations.desc(*scope).is_none())
            || (location == LocationKind::Background && !declarations.background_location());
        if undeclared {
            return Err(invalid(
                "decision.scope",
                format!(
                    "decision for app {app} user {user} scope {scope}: a grant of a scope the app does not declare"
                ),
            )
            .into());
        }
    }
    Ok(ImportPlan {
        apps,
        rows: rows
            .into_iter()
            .map(|((app, user, scope), (state, lifetime))| DecisionRow {
                app,
                user,
                scope,
                state,
                lifetime,
            })
            .collect(),
    })
}

/// A stored decision's lifetime must belong to a grant.
pub fn check_row(row: &DecisionRow) -> Result<(), DomainError> {
    if row.lifetime != Lifetime::Permanent && row.state != DecisionState::Granted {
        return Err(invalid(
            "decision",
            format!(
                "decision for {} {} {}: only grants have a lifetime",
                row.app, row.user, row.scope
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, scope: Scope, state: DecisionState, lifetime: Lifetime) -> ImportRecord {
        ImportRecord::Decision(DecisionRow {
            app: AppId::parse("wxa").unwrap(),
            user: UserId::parse(user).unwrap(),
            scope,
            state,
            lifetime,
        })
    }

    fn app(location: bool) -> ImportRecord {
        ImportRecord::App {
            id: AppId::parse("wxa").unwrap(),
            kind: AppKind::MiniProgram,
            raw: RawDeclarations {
                permission: if location {
                    vec![("scope.userLocation".into(), "nearby".into())]
                } else {
                    vec![]
                },
                ..RawDeclarations::default()
            },
        }
    }

    fn run(records: Vec<ImportRecord>, registered: bool) -> Result<ImportPlan, DomainError> {
        plan(records.into_iter().map(Ok), |_| {
            Ok(registered.then(Declarations::default))
        })
    }

    fn refused(records: Vec<ImportRecord>, registered: bool, needle: &str) {
        let err = run(records, registered).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }

    #[test]
    fn an_import_is_checked_whole() {
        use DecisionState::{Denied, Granted};
        use Scope::{Camera, UserLocation};
        let p = Lifetime::Permanent;
        let ok = run(
            vec![
                ImportRecord::Header { format: 2 },
                app(true),
                app(true),
                row("u", UserLocation, Granted, p.clone()),
                row("u", UserLocation, Granted, p.clone()),
                row("v", Camera, Denied, p.clone()),
                ImportRecord::Ignored,
            ],
            false,
        )
        .unwrap();
        assert_eq!(ok.apps.len(), 1, "an identical app record counts once");
        assert_eq!(ok.rows.len(), 2, "an identical row counts once");

        refused(vec![ImportRecord::Header { format: 3 }], false, "format 3");
        refused(vec![app(true), app(false)], false, "two different records");
        refused(
            vec![
                app(true),
                row("u", Camera, Granted, p.clone()),
                row("u", Camera, Denied, p.clone()),
            ],
            false,
            "two rows disagree",
        );
        refused(
            vec![row("u", Camera, Denied, p.clone())],
            false,
            "neither in the import nor registered",
        );
        assert!(run(vec![row("u", Camera, Denied, p.clone())], true).is_ok());
        refused(
            vec![app(false), row("u", UserLocation, Granted, p.clone())],
            false,
            "does not declare",
        );
        let far = Lifetime::Until {
            expires_at_ms: MAX_TIMESTAMP_MS,
        };
        refused(
            vec![app(true), row("u", Camera, Granted, far)],
            false,
            "beyond 9999-12-31",
        );
        let many: Vec<ImportRecord> = std::iter::once(app(true))
            .chain((0..=MAX_ROWS_PER_USER).map(|_| row("u", Camera, Granted, p.clone())))
            .collect();
        refused(many, false, "decision rows in a row");
    }

    #[test]
    fn only_grants_have_a_lifetime() {
        let mut row = DecisionRow {
            app: AppId::parse("wxa").unwrap(),
            user: UserId::parse("u").unwrap(),
            scope: Scope::Camera,
            state: DecisionState::Denied,
            lifetime: Lifetime::Until { expires_at_ms: 5 },
        };
        assert!(check_row(&row).is_err());
        row.state = DecisionState::Granted;
        assert!(check_row(&row).is_ok());
    }
}
