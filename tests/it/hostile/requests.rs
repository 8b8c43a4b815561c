//! Properties of whole requests: app declarations, Watch filters, settings
//! updates and imports, converted and planned as the service does.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use consentd::{
    domain::{
        app::{BACKGROUND_MODES, MAX_DESC_CHARS, PRIVATE_INFOS},
        machine::{plan_import, plan_settings_update},
        AppId, AppKind, Availability, Cause, DecisionState, Declarations, Scope, SettingsUpdate,
        UserId,
    },
    grpc::convert,
    pb,
};
use proptest::{collection::vec, prelude::*, sample::select};

use super::strategies::{
    apply_checked, bounded, config, field_of, hostile_string, id_ok, kind_strategy, name_like,
    scope_strategy, state_strategy, stored_decisions, test_app, watch_list,
};

proptest! {
    #![proptest_config(config())]

    /// App registrations: id, kind, then declarations; accepted exactly when
    /// every permission key is a scope of the kind with a 1 to 256 character
    /// printable desc and every mode and private info is a known value (fuzzy
    /// and precise location not together). Accepted declarations are the input.
    #[test]
    fn app_declarations_accept_only_valid_declarations(
        present in prop::bool::weighted(0.97),
        id in prop_oneof![Just("wxapp".to_owned()), hostile_string()],
        kind in prop_oneof![4 => 0i32..4, 1 => any::<i32>()],
        permission in proptest::collection::hash_map(
            name_like(),
            prop_oneof![
                3 => "[a-zA-Z ]{1,30}",
                1 => Just(String::new()),
                1 => Just(" \t ".to_owned()),
                2 => hostile_string(),
                1 => (MAX_DESC_CHARS - 2..MAX_DESC_CHARS + 3).prop_map(|n| "é".repeat(n)),
            ],
            0..5,
        ),
        modes in prop_oneof![
            4 => vec(prop_oneof![select(BACKGROUND_MODES.to_vec()).prop_map(|s| s.to_owned()), hostile_string()], 0..4),
            1 => (0usize..3000).prop_map(|n| vec!["audio".to_owned(); n]),
        ],
        infos in vec(prop_oneof![3 => select(PRIVATE_INFOS.to_vec()).prop_map(|s| s.to_owned()), 1 => name_like()], 0..5),
    ) {
        let app = present.then(|| pb::App {
            privacy: None,
            app_id: id.clone(),
            kind,
            permission: permission
                .iter()
                .map(|(k, v)| (k.clone(), pb::PermissionDesc { desc: v.clone() }))
                .collect(),
            required_background_modes: modes.clone(),
            required_private_infos: infos.clone(),
            revision: 7,
            updated_at: None,
        });
        let domain_kind = match kind {
            1 => Some(AppKind::MiniProgram),
            2 => Some(AppKind::MiniGame),
            _ => None,
        };
        let desc_ok = |d: &str| {
            !d.trim().is_empty() && d.chars().count() <= MAX_DESC_CHARS && !d.chars().any(char::is_control)
        };
        let permission_ok = |k: AppKind| {
            permission.iter().all(|(key, desc)| {
                key.parse::<Scope>()
                    .is_ok_and(|s| s.availability(k) != Availability::Unsupported)
                    && desc_ok(desc)
            })
        };
        let fuzzy = infos.iter().any(|i| i == "getFuzzyLocation");
        let precise = infos.iter().any(|i| {
            ["getLocation", "onLocationChange", "startLocationUpdate", "startLocationUpdateBackground"]
                .contains(&i.as_str())
        });
        let want: Result<(), &str> = if !present {
            Err("app")
        } else if !id_ok(&id) {
            Err("app.app_id")
        } else if let Some(k) = domain_kind {
            if !permission_ok(k) {
                Err("app.permission")
            } else if !modes.iter().all(|m| BACKGROUND_MODES.contains(&m.as_str())) {
                Err("app.required_background_modes")
            } else if !infos.iter().all(|i| PRIVATE_INFOS.contains(&i.as_str())) || (fuzzy && precise) {
                Err("app.required_private_infos")
            } else {
                Ok(())
            }
        } else {
            Err("app.kind")
        };
        let got = convert::app_request(app)
            .and_then(|(id, kind, raw)| Declarations::parse(kind, raw).map(|d| (id, kind, d)));
        match (want, got) {
            (Ok(()), Ok((got_id, got_kind, d))) => {
                prop_assert_eq!(got_id.as_str(), id.as_str());
                prop_assert_eq!(Some(got_kind), domain_kind);
                let names: BTreeMap<&str, &str> =
                    d.permission.iter().map(|(s, v)| (s.name(), v.as_str())).collect();
                let wanted: BTreeMap<&str, &str> =
                    permission.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                prop_assert_eq!(names, wanted);
                prop_assert_eq!(&d.background_modes, &modes.iter().cloned().collect::<BTreeSet<_>>());
                prop_assert_eq!(&d.private_infos, &infos.iter().cloned().collect::<BTreeSet<_>>());
            }
            (Err(field), Err(e)) => {
                prop_assert_eq!(field_of(&e), field, "{}", e);
                bounded(&e)?;
            }
            (want, got) => prop_assert!(false, "want {want:?}, got {got:?}"),
        }
    }

    /// Watch filters: at most 1000 entries per list (all three counted
    /// first), then every entry valid, in list order; an accepted filter
    /// holds exactly the given entries.
    #[test]
    fn watch_filters_are_bounded_and_exact(
        apps in watch_list(prop_oneof![Just("wxapp".to_owned()), hostile_string()], "wx"),
        users in watch_list(prop_oneof![Just("u".to_owned()), hostile_string()], "u"),
        scopes in watch_list(name_like(), "scope.camera"),
        start in proptest::option::of(any::<u64>()),
    ) {
        let req = pb::WatchRequest {
            app_ids: apps.clone(),
            user_ids: users.clone(),
            scopes: scopes.clone(),
            start_revision: start,
        };
        let is_scope = |s: &String| s.parse::<Scope>().is_ok();
        let first_bad = |list: &[String], ok: &dyn Fn(&String) -> bool, name: &str| {
            list.iter().position(|x| !ok(x)).map(|i| format!("{name}[{i}]"))
        };
        let too_long = [("app_ids", apps.len()), ("user_ids", users.len()), ("scopes", scopes.len())]
            .into_iter()
            .find(|(_, n)| *n > convert::MAX_WATCH_FILTER)
            .map(|(f, _)| f.to_owned());
        let want = too_long
            .or_else(|| first_bad(&apps, &|s: &String| id_ok(s), "app_ids"))
            .or_else(|| first_bad(&users, &|s: &String| id_ok(s), "user_ids"))
            .or_else(|| first_bad(&scopes, &is_scope, "scopes"));
        match (want, convert::watch_request(req)) {
            (None, Ok((filter, got_start))) => {
                prop_assert_eq!(got_start, start);
                let got: HashSet<&str> = filter.apps.iter().map(AppId::as_str).collect();
                prop_assert_eq!(got, apps.iter().map(String::as_str).collect::<HashSet<_>>());
                let got: HashSet<&str> = filter.users.iter().map(UserId::as_str).collect();
                prop_assert_eq!(got, users.iter().map(String::as_str).collect::<HashSet<_>>());
                let got: HashSet<&str> = filter.scopes.iter().map(|s| s.name()).collect();
                prop_assert_eq!(got, scopes.iter().map(String::as_str).collect::<HashSet<_>>());
            }
            (Some(field), Err(e)) => {
                prop_assert_eq!(field_of(&e), field.as_str(), "{}", e);
                bounded(&e)?;
            }
            (want, got) => prop_assert!(false, "want error in {want:?}, got {got:?}"),
        }
    }

    /// UpdateSetting: the raw map and location number convert as the
    /// service does; whatever gets through, the plan never panics, every
    /// change starts where it claims, and background GRANTED implies
    /// location GRANTED after each change.
    #[test]
    fn settings_updates_keep_the_location_invariant(
        raw_toggles in proptest::collection::hash_map(name_like(), any::<bool>(), 0..6),
        raw_location in prop_oneof![4 => 0i32..4, 1 => any::<i32>()],
        kind in kind_strategy(),
        background in any::<bool>(),
        before in stored_decisions(),
    ) {
        let mut toggles = BTreeMap::new();
        let mut converted = Ok(());
        for (name, on) in &raw_toggles {
            match convert::scope("auth_setting", name) {
                Ok(s) => {
                    toggles.insert(s, *on);
                }
                Err(e) => converted = Err(e),
            }
        }
        let location = convert::location_option(raw_location);
        prop_assert_eq!(location.is_ok(), (0..=3).contains(&raw_location));
        prop_assert_eq!(
            converted.is_ok(),
            raw_toggles.keys().all(|k| k.parse::<Scope>().is_ok())
        );
        if let (Ok(()), Ok(location)) = (converted, location) {
            let app = test_app(kind, background);
            let update = SettingsUpdate { toggles, location };
            if let Ok(changes) = plan_settings_update(&app, &before, &update) {
                prop_assert!(changes.iter().all(|c| c.cause == Cause::Settings));
                let after = apply_checked(&before, &changes);
                prop_assert!(after.is_ok(), "{:?}: {:?}", update, after);
                let scopes: HashSet<Scope> = changes.iter().map(|c| c.scope).collect();
                prop_assert_eq!(scopes.len(), changes.len(), "a scope changed twice");
            }
        }
    }

    /// Imports: accepted exactly when every wanted state is GRANTED or
    /// DENIED for a scope that takes decisions in this app kind and the
    /// result keeps background => location; the plan reaches exactly the
    /// wanted states, keeping the invariant after each change.
    #[test]
    fn imports_validate_every_record(
        kind in kind_strategy(),
        before in stored_decisions(),
        wanted in vec((scope_strategy(), state_strategy()), 0..12),
    ) {
        let app = test_app(kind, true);
        let user = UserId::parse("u").unwrap();
        let mut target = before.clone();
        let mut records_ok = true;
        for &(scope, state) in &wanted {
            records_ok &= state != DecisionState::NotDetermined
                && scope.availability(kind) == Availability::Popup;
            target.insert(scope, state);
        }
        let granted = |s| target.get(&s) == Some(&DecisionState::Granted);
        let consistent = !granted(Scope::UserLocationBackground) || granted(Scope::UserLocation);
        match plan_import(&app, &user, &before, &wanted) {
            Ok(changes) => {
                prop_assert!(records_ok && consistent, "accepted {wanted:?}");
                prop_assert!(changes.iter().all(|c| c.cause == Cause::Operator));
                let after = apply_checked(&before, &changes);
                prop_assert_eq!(after, Ok(target));
            }
            Err(e) => {
                prop_assert!(!(records_ok && consistent), "refused {wanted:?}: {e}");
                prop_assert!(field_of(&e).starts_with("decision"));
            }
        }
    }
}
