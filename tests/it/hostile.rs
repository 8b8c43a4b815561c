//! Hostile input. Property tests feed arbitrary strings, enum numbers and
//! repeated fields to the request -> domain conversion (`grpc::convert`) and
//! to the domain parsers (versions, ids, scopes, interfaces, platforms,
//! declarations, settings updates, imports): never a panic, Ok exactly for
//! the documented inputs, errors naming the field in a message small enough
//! for an HTTP/2 header, however long the value. Then a flood of malformed
//! requests (bad fields, bytes that are not protobuf, gRPC frames that lie,
//! oversized messages, unknown methods) against a live daemon: each gets its
//! status code, none changes the store, and the daemon keeps serving.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    future::Future,
    hash::{DefaultHasher, Hash, Hasher},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use consentd::{
    domain::{
        app::{BACKGROUND_MODES, MAX_DESC_CHARS, PRIVATE_INFOS},
        machine::{plan_import, plan_settings_update},
        Api, App, AppId, AppKind, Availability, Cause, Change, DecisionState, Declarations,
        DomainError, Platform, Scope, SettingsUpdate, UserDecisions, UserId, Version, VersionError,
        CATALOG, MAX_ID_LEN,
    },
    grpc::convert,
    pb::{self, export_record::Record},
};
use proptest::{collection::vec, prelude::*, sample::select};
use prost::{
    bytes::{Buf, BufMut, Bytes},
    Message,
};
use tonic::{
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
    Code, Status,
};

use crate::{
    fixture::{android, bare_app, heavy, location_app, TestDaemon},
    support::{self, update_req},
};

// ===========================================================================
// Properties
// ===========================================================================

/// Segments a version may have (notes/semantics.md: 1 to 8).
const MAX_SEGMENTS: usize = 8;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Characters that break parsers: anything, ASCII (controls included), and
/// look-alikes of the characters ids, versions and scopes are made of.
fn hostile_char() -> BoxedStrategy<char> {
    prop_oneof![
        4 => any::<char>(),
        3 => proptest::char::range('\0', '\u{7f}'),
        2 => select(vec![
            '\u{85}', '\u{a0}', '\u{1680}', '\u{2028}', '\u{3000}', '\u{200b}', '\u{202e}',
            '\u{feff}', '\u{fffd}', '\u{ff0e}', '\u{ff18}', '\u{663}', '\u{9f}', '.', '0', '9',
            'é', '用',
        ]),
    ]
    .boxed()
}

/// Arbitrary strings: short unicode soup, digits and dots, huge numbers, and
/// repetitions around the id length limit and far beyond it.
fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        6 => vec(hostile_char(), 0..24).prop_map(String::from_iter),
        3 => "[0-9.]{0,30}",
        2 => (hostile_char(), 1usize..140).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => (0usize..20_000).prop_map(|n| "9".repeat(n)),
        1 => (0usize..5_000).prop_map(|n| "1.".repeat(n)),
        1 => (hostile_char(), 1_000usize..20_000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

/// Catalog names, interface names, near misses of them and arbitrary strings.
fn name_like() -> BoxedStrategy<String> {
    let mut known: Vec<String> = CATALOG.iter().map(|i| i.name.to_owned()).collect();
    known.extend(
        CATALOG
            .iter()
            .flat_map(|i| i.interfaces.iter().map(|s| (*s).to_owned())),
    );
    let near = known.clone();
    prop_oneof![
        3 => select(known),
        2 => (select(near), hostile_char(), 0usize..3).prop_map(|(name, c, how)| match how {
            0 => format!("{name}{c}"),
            1 => format!("{c}{name}"),
            _ => name.to_uppercase(),
        }),
        2 => hostile_string(),
    ]
    .boxed()
}

/// What the parser must do, written from notes/semantics.md: 1 to 8
/// dot-separated ASCII-digit segments, each fitting in a u32, checked left
/// to right.
fn version_model(s: &str) -> Result<Vec<u32>, VersionError> {
    if s.is_empty() {
        return Err(VersionError::Empty);
    }
    let mut segments = Vec::new();
    for (i, part) in s.split('.').enumerate() {
        if i == MAX_SEGMENTS {
            return Err(VersionError::TooManySegments);
        }
        if part.is_empty() {
            return Err(VersionError::EmptySegment);
        }
        if !part.chars().all(|c| c.is_ascii_digit()) {
            return Err(VersionError::NotNumeric(part.to_owned()));
        }
        let digits = part.trim_start_matches('0');
        if digits.len() > 10 || (digits.len() == 10 && digits > "4294967295") {
            return Err(VersionError::TooLarge(part.to_owned()));
        }
        segments.push(digits.parse().unwrap_or(0));
    }
    Ok(segments)
}

fn hash_of(v: &Version) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The documented id rule: 1 to 128 bytes, no control or whitespace character.
fn id_ok(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && !raw.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Half the 16 KiB header list hyper's HTTP/2 client accepts: a status
/// message beyond it kills the client's connection, every call on it.
const MAX_WIRE_MESSAGE: usize = 8 * 1024;

/// The length of `message` as the grpc-message header carries it
/// (percent-encoded), asserted to stay under [`MAX_WIRE_MESSAGE`].
fn bounded(e: &DomainError) -> Result<(), TestCaseError> {
    let message = e.to_string();
    let wire: usize = message
        .as_bytes()
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                1
            } else {
                3
            }
        })
        .sum();
    prop_assert!(
        wire <= MAX_WIRE_MESSAGE,
        "a {wire}-byte status message: {:.200}...",
        message
    );
    Ok(())
}

fn field_of(e: &DomainError) -> &str {
    match e {
        DomainError::InvalidArgument { field, .. } => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn scope_strategy() -> impl Strategy<Value = Scope> {
    (0..CATALOG.len()).prop_map(|i| CATALOG[i].scope)
}

fn state_strategy() -> impl Strategy<Value = DecisionState> {
    select(vec![
        DecisionState::NotDetermined,
        DecisionState::Granted,
        DecisionState::Denied,
    ])
}

fn kind_strategy() -> impl Strategy<Value = AppKind> {
    select(vec![AppKind::MiniProgram, AppKind::MiniGame])
}

/// Stored decisions as the store can hold them: decided scopes only, and
/// background GRANTED only with location GRANTED.
fn stored_decisions() -> impl Strategy<Value = UserDecisions> {
    proptest::collection::btree_map(
        scope_strategy(),
        select(vec![DecisionState::Granted, DecisionState::Denied]),
        0..8,
    )
    .prop_map(|mut d| {
        if d.get(&Scope::UserLocationBackground) == Some(&DecisionState::Granted) {
            d.insert(Scope::UserLocation, DecisionState::Granted);
        }
        d
    })
}

fn test_app(kind: AppKind, background_location: bool) -> App {
    let mut declarations = Declarations::default();
    if background_location {
        declarations.background_modes.insert("location".into());
    }
    App {
        privacy_version: 0,
        id: AppId::parse("wxprop").unwrap(),
        kind,
        declarations,
        revision: 1,
        updated_at_ms: 0,
    }
}

/// Applies `changes` in order, checking that each starts from the state it
/// claims and that background GRANTED implies location GRANTED after each.
fn apply_checked(before: &UserDecisions, changes: &[Change]) -> Result<UserDecisions, String> {
    let mut state = before.clone();
    for c in changes {
        let old = state.get(&c.scope).copied().unwrap_or_default();
        if old != c.old {
            return Err(format!("{c:?} starts from {old:?}"));
        }
        if c.new == DecisionState::NotDetermined {
            return Err(format!("{c:?} plans NOT_DETERMINED"));
        }
        state.insert(c.scope, c.new);
        let granted = |s| state.get(&s) == Some(&DecisionState::Granted);
        if granted(Scope::UserLocationBackground) && !granted(Scope::UserLocation) {
            return Err(format!("background granted without location after {c:?}"));
        }
    }
    Ok(state)
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary strings parse exactly as the grammar says, with the first
    /// offending segment named; accepted versions print canonically and
    /// parse back to an equal version with the same segments.
    #[test]
    fn version_parse_matches_the_grammar(raw in hostile_string()) {
        let parsed = raw.parse::<Version>();
        match (version_model(&raw), parsed) {
            (Ok(segments), Ok(v)) => {
                let canonical = Version::new(&segments).unwrap().to_string();
                prop_assert_eq!(v.to_string(), canonical.clone());
                let again: Version = canonical.parse().unwrap();
                prop_assert_eq!(again.to_string(), canonical);
                prop_assert_eq!(&again, &v);
                prop_assert_eq!(hash_of(&again), hash_of(&v));
            }
            (Err(want), Err(got)) => {
                prop_assert_eq!(&got, &want);
                prop_assert!(!got.to_string().is_empty());
            }
            (want, got) => prop_assert!(false, "{raw:?}: model {want:?}, parser {got:?}"),
        }
    }

    /// Display -> parse is the identity on 1 to 8 segments of any u32, and
    /// the order is the zero-padded numeric one, consistent with Eq and Hash.
    #[test]
    fn version_round_trips_and_orders_numerically(
        a in vec(prop_oneof![0u32..3, any::<u32>()], 1..=MAX_SEGMENTS),
        b in vec(prop_oneof![0u32..3, any::<u32>()], 1..=MAX_SEGMENTS),
    ) {
        let (va, vb) = (Version::new(&a).unwrap(), Version::new(&b).unwrap());
        let text = va.to_string();
        let back: Version = text.parse().unwrap();
        prop_assert_eq!(back.to_string(), text);
        let pad = |s: &[u32]| {
            let mut p = s.to_vec();
            p.resize(MAX_SEGMENTS, 0);
            p
        };
        prop_assert_eq!(va.cmp(&vb), pad(&a).cmp(&pad(&b)));
        prop_assert_eq!(va == vb, pad(&a) == pad(&b));
        if va == vb {
            prop_assert_eq!(hash_of(&va), hash_of(&vb));
        }
    }

    /// Ids are accepted exactly when they follow the documented rule; an
    /// accepted id is the input unchanged; a refusal names the field.
    #[test]
    fn ids_accept_exactly_the_documented_ids(raw in hostile_string(), user in hostile_string()) {
        match AppId::parse_field("app.app_id", &raw) {
            Ok(id) => {
                prop_assert!(id_ok(&raw), "accepted {raw:?}");
                prop_assert_eq!(id.as_str(), raw.as_str());
                prop_assert_eq!(id.to_string(), raw.clone());
            }
            Err(e) => {
                prop_assert!(!id_ok(&raw), "refused {raw:?}: {e}");
                prop_assert_eq!(field_of(&e), "app.app_id");
                bounded(&e)?;
                prop_assert!(e.to_string().starts_with("app.app_id "), "{e}");
            }
        }
        // subject: app_id is checked before user_id.
        match convert::subject(&raw, &user) {
            Ok(s) => {
                prop_assert!(id_ok(&raw) && id_ok(&user));
                prop_assert_eq!(s.app.as_str(), raw.as_str());
                prop_assert_eq!(s.user.as_str(), user.as_str());
            }
            Err(e) => {
                let want = if id_ok(&raw) { "user_id" } else { "app_id" };
                prop_assert!(!(id_ok(&raw) && id_ok(&user)));
                prop_assert_eq!(field_of(&e), want);
            }
        }
        prop_assert_eq!(UserId::parse(&user).is_ok(), id_ok(&user));
    }

    /// Only catalog names are scopes, only catalog interfaces are APIs, and
    /// only the six tokens are platforms; each resolves to exactly its name.
    #[test]
    fn names_resolve_only_from_the_catalog(raw in name_like()) {
        let is_scope = CATALOG.iter().any(|i| i.name == raw);
        match convert::scope("scopes[3]", &raw) {
            Ok(s) => {
                prop_assert!(is_scope);
                prop_assert_eq!(s.name(), raw.as_str());
                prop_assert_eq!(s.to_string(), raw.clone());
            }
            Err(e) => {
                prop_assert!(!is_scope);
                prop_assert_eq!(field_of(&e), "scopes[3]");
                bounded(&e)?;
            }
        }
        let is_api = CATALOG.iter().any(|i| i.interfaces.contains(&raw.as_str()));
        match Api::parse_field("api", &raw) {
            Ok(api) => {
                prop_assert!(is_api);
                prop_assert_eq!(api.name(), raw.as_str());
                prop_assert!(!api.scopes().is_empty());
                for s in api.scopes() {
                    prop_assert!(s.info().interfaces.contains(&raw.as_str()));
                }
                prop_assert!(api.scopes().windows(2).all(|w| w[0] < w[1]));
            }
            Err(e) => {
                prop_assert!(!is_api);
                prop_assert_eq!(field_of(&e), "api");
                bounded(&e)?;
            }
        }
        match raw.parse::<Platform>() {
            Ok(p) => prop_assert_eq!(p.to_string(), raw.clone()),
            Err(e) => {
                prop_assert!(Platform::ALL.iter().all(|p| p.token() != raw));
                prop_assert!(e.contains("unknown platform"));
            }
        }
    }

    /// ClientInfo: missing, then platform, host_version, sdk_version, in
    /// that order; accepted clients carry exactly the parsed values.
    #[test]
    fn client_conversion_checks_each_field(
        present in prop::bool::weighted(0.95),
        platform in prop_oneof![3 => -2i32..10, 1 => any::<i32>()],
        host in prop_oneof![Just("8.0.5".to_owned()), hostile_string()],
        sdk in prop_oneof![Just("3.0.0".to_owned()), hostile_string()],
    ) {
        let info = present.then(|| pb::ClientInfo {
            platform,
            host_version: host.clone(),
            sdk_version: sdk.clone(),
        });
        let want = if !present {
            Err("client")
        } else if !(1..=6).contains(&platform) {
            Err("client.platform")
        } else if version_model(&host).is_err() {
            Err("client.host_version")
        } else if version_model(&sdk).is_err() {
            Err("client.sdk_version")
        } else {
            Ok(())
        };
        match (want, convert::client(info)) {
            (Ok(()), Ok(c)) => {
                prop_assert_eq!(Platform::ALL[platform as usize - 1], c.platform);
                prop_assert_eq!(c.host_version.to_string(), host.parse::<Version>().unwrap().to_string());
                prop_assert_eq!(c.sdk_version.to_string(), sdk.parse::<Version>().unwrap().to_string());
            }
            (Err(field), Err(e)) => {
                prop_assert_eq!(field_of(&e), field);
                prop_assert!(e.to_string().starts_with(field), "{e}");
                bounded(&e)?;
            }
            (want, got) => prop_assert!(false, "want {want:?}, got {got:?}"),
        }
    }

    /// Enum numbers: only the declared values are accepted.
    #[test]
    fn enum_numbers_outside_the_proto_are_refused(raw in prop_oneof![-3i32..8, any::<i32>()]) {
        prop_assert_eq!(convert::answer(raw).is_ok(), (1..=4).contains(&raw));
        match convert::location_option(raw) {
            Ok(None) => prop_assert_eq!(raw, 0),
            Ok(Some(_)) => prop_assert!((1..=3).contains(&raw)),
            Err(e) => {
                prop_assert!(!(0..=3).contains(&raw));
                prop_assert_eq!(field_of(&e), "location");
            }
        }
        match convert::app_kind("kind", raw, false) {
            Ok(None) => prop_assert_eq!(raw, 0),
            Ok(Some(_)) => prop_assert!((1..=2).contains(&raw)),
            Err(e) => prop_assert!(!(0..=2).contains(&raw), "{e}"),
        }
        let required = convert::app_kind("app.kind", raw, true);
        prop_assert_eq!(required.as_ref().is_ok_and(Option::is_some), (1..=2).contains(&raw));
        prop_assert!(required.is_err() || (1..=2).contains(&raw));
    }

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

/// A Watch filter list: usually a few arbitrary entries, sometimes a valid
/// `filler` repeated to around the 1000-entry limit with one arbitrary
/// entry somewhere in it.
fn watch_list(
    entry: impl Strategy<Value = String> + Clone,
    filler: &'static str,
) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        6 => vec(entry.clone(), 0..4),
        1 => (995usize..1006, any::<prop::sample::Index>(), entry).prop_map(move |(n, at, odd)| {
            let mut list = vec![filler.to_owned(); n];
            let i = at.index(n);
            list[i] = odd;
            list
        }),
    ]
}

// ===========================================================================
// The flood
// ===========================================================================

/// Sends raw request bytes as one gRPC message (tonic writes the frame
/// header) and returns the raw response bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A channel that replaces each request's body with `body` verbatim (frame
/// headers included) and adds `headers`: frames that lie about themselves.
#[derive(Clone)]
struct ExactBody {
    channel: Channel,
    body: Bytes,
    headers: &'static [(&'static str, &'static str)],
}

type ChannelFuture = Pin<
    Box<
        dyn Future<Output = Result<http::Response<tonic::body::Body>, tonic::transport::Error>>
            + Send,
    >,
>;

impl tower::Service<http::Request<tonic::body::Body>> for ExactBody {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = ChannelFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> ChannelFuture {
        let (mut parts, _) = request.into_parts();
        for (name, value) in self.headers {
            parts
                .headers
                .insert(*name, http::HeaderValue::from_static(value));
        }
        let body = tonic::body::Body::new(axum::body::Body::from(self.body.clone()));
        let request = http::Request::from_parts(parts, body);
        Box::pin(tower::Service::call(&mut self.channel, request))
    }
}

/// What goes on the wire.
enum Wire {
    /// One message; tonic frames it.
    Message(Bytes),
    /// The request body exactly (frame headers included), plus headers.
    Body(Bytes, &'static [(&'static str, &'static str)]),
}

struct Case {
    /// The malformation category, for the summary.
    category: &'static str,
    /// What is wrong with this request, for failure messages.
    label: String,
    path: String,
    wire: Wire,
    code: Code,
    /// A substring the status message must contain ("" for none).
    needle: &'static str,
}

async fn send(channel: Channel, path: &str, wire: &Wire) -> Result<Bytes, Status> {
    let path = http::uri::PathAndQuery::try_from(path).expect("a valid path");
    let unavailable = |e: tonic::transport::Error| Status::unavailable(e.to_string());
    match wire {
        Wire::Message(payload) => {
            let mut grpc = Grpc::new(channel);
            grpc.ready().await.map_err(unavailable)?;
            let request = tonic::Request::new(payload.clone());
            Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
        }
        Wire::Body(body, headers) => {
            let mut grpc = Grpc::new(ExactBody {
                channel,
                body: body.clone(),
                headers,
            });
            grpc.ready().await.map_err(unavailable)?;
            let request = tonic::Request::new(Bytes::new());
            Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
        }
    }
}

/// A gRPC frame: compressed flag, the length it claims, the bytes it has.
fn frame(flag: u8, claimed_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flag);
    out.extend_from_slice(&claimed_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn framed(payload: &[u8]) -> Vec<u8> {
    frame(0, payload.len() as u32, payload)
}

const AUTH: &str = "consent.v1.Authorization";
const APPS: &str = "consent.v1.Apps";
const ADMIN: &str = "consent.v1.Admin";

/// Over tonic's default limit on a decoded request message (4 MiB) and the
/// daemon's own (at most that).
const OVER_LIMIT: usize = 4 * 1024 * 1024 + 1;
/// Large fields that still fit any message limit of 1 MiB or more.
const BIG_BYTES: usize = 512 * 1024;
/// Repeated fields that long still fit a 1 MiB message.
const BIG_LIST: usize = 30_000;

fn path(service: &str, method: &str) -> String {
    format!("/{service}/{method}")
}

/// A deterministic generator (splitmix64), so the flood is the same each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn bad_ids() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("129 bytes", "x".repeat(MAX_ID_LEN + 1)),
        ("130 bytes in 65 chars", "é".repeat(65)),
        ("64 KiB", "x".repeat(64 * 1024)),
        ("space", "a b".into()),
        ("leading space", " a".into()),
        ("tab", "a\tb".into()),
        ("newline", "a\nb".into()),
        ("crlf", "a\r\n".into()),
        ("nul", "ab\0".into()),
        ("del", "\u{7f}".into()),
        ("ansi escape", "a\u{1b}[31m".into()),
        ("c1 control", "a\u{9f}".into()),
        ("next line", "a\u{85}".into()),
        ("nbsp", "a\u{a0}".into()),
        ("line separator", "x\u{2028}".into()),
        ("ideographic space", "用\u{3000}户".into()),
    ]
}

fn bad_scopes() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("unknown", "scope.nope".into()),
        ("upper case", "SCOPE.CAMERA".into()),
        ("trailing space", "scope.camera ".into()),
        ("leading space", " scope.camera".into()),
        ("nul", "scope.camera\0".into()),
        ("prefix only", "scope.".into()),
        ("bare name", "camera".into()),
        ("zero-width space", "scope.user\u{200b}Location".into()),
        ("an interface", "wx.getLocation".into()),
        ("fullwidth", "\u{ff53}cope.camera".into()),
        ("replacement char", "\u{fffd}".into()),
        ("64 KiB", "scope.camera".repeat(5462)),
    ]
}

fn bad_versions() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("dot", ".".into()),
        ("trailing dot", "8.".into()),
        ("leading dot", ".8".into()),
        ("empty segment", "8..0".into()),
        ("letters", "a.b".into()),
        ("suffix", "8.0.0-beta".into()),
        ("plus", "+8".into()),
        ("negative", "-1".into()),
        ("space", " 8".into()),
        ("nul", "8.0\0".into()),
        ("hex", "0x10".into()),
        ("exponent", "1e3".into()),
        ("fullwidth digits", "\u{ff18}.0".into()),
        ("arabic-indic digits", "\u{663}.\u{664}".into()),
        ("u32 overflow", "4294967296".into()),
        ("huge", "99999999999999999999.1".into()),
        ("nine segments", "1.2.3.4.5.6.7.8.9".into()),
        ("64 KiB of digits", "1".repeat(64 * 1024)),
        ("32 K segments", "1.".repeat(32 * 1024) + "1"),
    ]
}

const BAD_ENUMS: [i32; 5] = [-1, 100, 65_536, i32::MAX, i32::MIN];

/// Payloads that are not protobuf whatever the message type.
fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    let mut deep = vec![0x0B; 200]; // 200 nested groups, never closed
    deep.push(0x0C);
    vec![
        ("wire type 7", vec![0x0F]),
        ("wire type 6", vec![0x0E, 0x01]),
        ("field number 0", vec![0x00, 0x01]),
        ("truncated varint", vec![0x08, 0xFF]),
        (
            "11-byte varint",
            [&[0x08][..], &[0xFF; 10], &[0x01]].concat(),
        ),
        ("length past the end", vec![0x0A, 0x10, b'a']),
        ("4 GiB length", vec![0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
        ("end group without start", vec![0x0C]),
        ("unclosed group", vec![0x0B, 0x08, 0x01]),
        ("groups nested 200 deep", deep),
    ]
}

/// Everything the seeded store holds, as Export streams it (events included).
async fn export(channel: &Channel) -> Vec<pb::ExportRecord> {
    support::export(channel, true).await
}

fn authorize_req(app: &str, user: &str, scope: &str) -> pb::AuthorizeRequest {
    support::authorize_req(app, user, scope, android())
}

fn decision_record(app: &str, user: &str, scope: &str, state: i32) -> pb::ExportRecord {
    pb::ExportRecord {
        record: Some(Record::Decision(pb::StoredDecision {
            app_id: app.into(),
            user_id: user.into(),
            scope: scope.into(),
            state,
            ..Default::default()
        })),
    }
}

const GRANTED: i32 = pb::DecisionState::Granted as i32;
const DENIED: i32 = pb::DecisionState::Denied as i32;

/// The flood's requests, one category at a time.
struct Cases {
    list: Vec<Case>,
    category: &'static str,
}

impl Cases {
    fn add(&mut self, label: impl Into<String>, path: String, wire: Wire, code: Code) {
        self.add_with(label, path, wire, code, "");
    }

    fn add_with(
        &mut self,
        label: impl Into<String>,
        path: String,
        wire: Wire,
        code: Code,
        needle: &'static str,
    ) {
        self.list.push(Case {
            category: self.category,
            label: label.into(),
            path,
            wire,
            code,
            needle,
        });
    }

    /// A well-formed message with a bad field: INVALID_ARGUMENT naming `needle`.
    fn invalid(
        &mut self,
        label: impl Into<String>,
        path: String,
        m: &impl Message,
        needle: &'static str,
    ) {
        let wire = Wire::Message(m.encode_to_vec().into());
        self.add_with(label, path, wire, Code::InvalidArgument, needle);
    }
}

fn auth(method: &str) -> String {
    path(AUTH, method)
}

fn apps(method: &str) -> String {
    path(APPS, method)
}

fn admin(method: &str) -> String {
    path(ADMIN, method)
}

fn pair(app: &str, user: &str) -> pb::GetSettingRequest {
    pb::GetSettingRequest {
        app_id: app.into(),
        user_id: user.into(),
    }
}

fn batch_req(app: &str, user: &str, scopes: Vec<String>) -> pb::BatchAuthorizeRequest {
    pb::BatchAuthorizeRequest {
        app_id: app.into(),
        user_id: user.into(),
        scopes,
        client: Some(android()),
    }
}

fn check_req(app: &str, user: &str, api: &str) -> pb::CheckApiRequest {
    support::check_req(app, user, api, android())
}

fn record_req(app: &str, user: &str, scope: &str, answer: i32) -> pb::RecordDecisionRequest {
    support::record_req(app, user, scope, answer, android())
}

fn register_req(app: pb::App) -> pb::RegisterAppRequest {
    pb::RegisterAppRequest { app: Some(app) }
}

fn update_app_req(app: pb::App) -> pb::UpdateAppRequest {
    pb::UpdateAppRequest { app: Some(app) }
}

fn app_record(app: pb::App) -> pb::ExportRecord {
    pb::ExportRecord {
        record: Some(Record::App(app)),
    }
}

const ALLOW: i32 = pb::Answer::Allow as i32;

/// Builds every malformed request. `stored_app` is wxloc as exported (an
/// import of it changes nothing).
fn cases(stored_app: &pb::App) -> Vec<Case> {
    let mut c = Cases {
        list: Vec::new(),
        category: "bad id",
    };
    let watch =
        |app_ids: Vec<String>, user_ids: Vec<String>, scopes: Vec<String>| pb::WatchRequest {
            app_ids,
            user_ids,
            scopes,
            start_revision: None,
        };
    let one = |s: &str| vec![s.to_owned()];

    // --- Bad ids, everywhere an id goes -------------------------------------
    for (what, id) in bad_ids() {
        let l = |f: &str| format!("{f}: {what}");
        let cam = one("scope.camera");
        for method in ["Authorize", "Explain"] {
            let req = authorize_req(&id, "u", "scope.camera");
            c.invalid(l("app_id"), auth(method), &req, "app_id");
            let req = authorize_req("wxloc", &id, "scope.camera");
            c.invalid(l("user_id"), auth(method), &req, "user_id");
        }
        let req = batch_req(&id, "u", cam.clone());
        c.invalid(l("app_id"), auth("BatchAuthorize"), &req, "app_id");
        let req = batch_req("wxloc", &id, cam.clone());
        c.invalid(l("user_id"), auth("BatchAuthorize"), &req, "user_id");
        let req = check_req(&id, "u", "wx.getLocation");
        c.invalid(l("app_id"), auth("CheckApi"), &req, "app_id");
        let req = check_req("wxloc", &id, "wx.getLocation");
        c.invalid(l("user_id"), auth("CheckApi"), &req, "user_id");
        let req = record_req(&id, "new", "scope.camera", ALLOW);
        c.invalid(l("app_id"), auth("RecordDecision"), &req, "app_id");
        let req = record_req("wxloc", &id, "scope.camera", ALLOW);
        c.invalid(l("user_id"), auth("RecordDecision"), &req, "user_id");
        // GetSetting, OpenSetting and RemoveApp requests share one layout.
        for method in ["GetSetting", "OpenSetting", "RemoveApp"] {
            c.invalid(l("app_id"), auth(method), &pair(&id, "alice"), "app_id");
            c.invalid(l("user_id"), auth(method), &pair("wxloc", &id), "user_id");
        }
        let req = update_req(&id, "alice", &[("scope.camera", false)], 0);
        c.invalid(l("app_id"), auth("UpdateSetting"), &req, "app_id");
        let req = update_req("wxloc", &id, &[("scope.camera", false)], 0);
        c.invalid(l("user_id"), auth("UpdateSetting"), &req, "user_id");
        let req = watch(vec!["wxloc".into(), id.clone()], vec![], vec![]);
        c.invalid(l("app_ids[1]"), auth("Watch"), &req, "app_ids[1]");
        let req = watch(vec![], one(&id), vec![]);
        c.invalid(l("user_ids[0]"), auth("Watch"), &req, "user_ids[0]");
        let req = register_req(bare_app(&id, pb::AppKind::MiniProgram));
        c.invalid(l("app.app_id"), apps("RegisterApp"), &req, "app.app_id");
        let req = update_app_req(bare_app(&id, pb::AppKind::MiniProgram));
        c.invalid(l("app.app_id"), apps("UpdateApp"), &req, "app.app_id");
        let req = pb::GetAppRequest { app_id: id.clone() };
        c.invalid(l("app_id"), apps("GetApp"), &req, "app_id");
        let req = pb::DeleteAppRequest { app_id: id.clone() };
        c.invalid(l("app_id"), apps("DeleteApp"), &req, "app_id");
        if !id.is_empty() {
            let req = pb::ListAppsRequest {
                page_size: 10,
                page_token: id.clone(),
            };
            c.invalid(l("page_token"), apps("ListApps"), &req, "page_token");
        }
    }

    // --- Unknown scopes and interfaces --------------------------------------
    c.category = "unknown scope";
    for (what, scope) in bad_scopes() {
        let l = |f: &str| format!("{f}: {what}");
        for method in ["Authorize", "Explain"] {
            let req = authorize_req("wxloc", "alice", &scope);
            c.invalid(l("scope"), auth(method), &req, "scope");
        }
        let scopes = vec!["scope.camera".into(), "scope.record".into(), scope.clone()];
        let req = batch_req("wxloc", "alice", scopes);
        c.invalid(l("scopes[2]"), auth("BatchAuthorize"), &req, "scopes[2]");
        let req = record_req("wxloc", "new", &scope, ALLOW);
        c.invalid(l("scope"), auth("RecordDecision"), &req, "scope");
        let req = update_req(
            "wxloc",
            "alice",
            &[("scope.camera", false), (&scope, true)],
            0,
        );
        c.invalid(
            l("auth_setting"),
            auth("UpdateSetting"),
            &req,
            "auth_setting",
        );
        let req = watch(vec![], vec![], one(&scope));
        c.invalid(l("scopes[0]"), auth("Watch"), &req, "scopes[0]");
        let req = register_req(location_app("wxfresh").desc_for(&scope));
        c.invalid(
            l("app.permission"),
            apps("RegisterApp"),
            &req,
            "app.permission",
        );
        let req = update_app_req(location_app("wxloc").desc_for(&scope));
        c.invalid(
            l("app.permission"),
            apps("UpdateApp"),
            &req,
            "app.permission",
        );
    }
    c.category = "unknown api";
    let long_api = "wx.getLocation".repeat(10_000);
    for api in [
        "",
        "wx.getlocation",
        "getLocation",
        "wx.getLocation ",
        "wx.getLocation\0",
        "scope.userLocation",
        "wx.",
        "wx.authorize",
        "CAMERA",
        "wx.getLocation.wx.getLocation",
        &long_api,
    ] {
        let req = check_req("wxloc", "alice", api);
        c.invalid(format!("api {api:.40?}"), auth("CheckApi"), &req, "api");
    }

    // --- Clients: missing, unknown platforms, unparsable versions -----------
    c.category = "bad client";
    let mut clients: Vec<(String, Option<pb::ClientInfo>, &'static str)> =
        vec![("missing".into(), None, "client is required")];
    for p in [0, 7].into_iter().chain(BAD_ENUMS) {
        let info = pb::ClientInfo {
            platform: p,
            ..android()
        };
        clients.push((format!("platform {p}"), Some(info), "client.platform"));
    }
    for (what, v) in bad_versions() {
        let host = pb::ClientInfo {
            host_version: v.clone(),
            ..android()
        };
        clients.push((
            format!("host_version {what}"),
            Some(host),
            "client.host_version",
        ));
        let sdk = pb::ClientInfo {
            sdk_version: v,
            ..android()
        };
        clients.push((
            format!("sdk_version {what}"),
            Some(sdk),
            "client.sdk_version",
        ));
    }
    for (label, client, needle) in clients {
        for method in ["Authorize", "Explain"] {
            let req = pb::AuthorizeRequest {
                client: client.clone(),
                ..authorize_req("wxloc", "alice", "scope.camera")
            };
            c.invalid(&label, auth(method), &req, needle);
        }
        let req = pb::BatchAuthorizeRequest {
            client: client.clone(),
            ..batch_req("wxloc", "alice", one("scope.camera"))
        };
        c.invalid(&label, auth("BatchAuthorize"), &req, needle);
        let req = pb::CheckApiRequest {
            client: client.clone(),
            ..check_req("wxloc", "alice", "camera")
        };
        c.invalid(&label, auth("CheckApi"), &req, needle);
        let req = pb::RecordDecisionRequest {
            client,
            ..record_req("wxloc", "new", "scope.camera", ALLOW)
        };
        c.invalid(&label, auth("RecordDecision"), &req, needle);
    }

    // --- Enum numbers outside the proto -------------------------------------
    c.category = "bad enum";
    for n in [0, 5].into_iter().chain(BAD_ENUMS) {
        let req = record_req("wxloc", "new", "scope.camera", n);
        c.invalid(
            format!("answer {n}"),
            auth("RecordDecision"),
            &req,
            "answer",
        );
    }
    for n in [4].into_iter().chain(BAD_ENUMS) {
        let req = update_req("wxloc", "alice", &[], n);
        c.invalid(
            format!("location {n}"),
            auth("UpdateSetting"),
            &req,
            "location",
        );
        let req = pb::ListScopesRequest { kind: n };
        c.invalid(format!("kind {n}"), auth("ListScopes"), &req, "kind");
    }
    for n in [0, 3].into_iter().chain(BAD_ENUMS) {
        let mut app = location_app("wxfresh");
        app.kind = n;
        let req = register_req(app.clone());
        c.invalid(
            format!("app.kind {n}"),
            apps("RegisterApp"),
            &req,
            "app.kind",
        );
        app.app_id = "wxloc".into();
        let req = update_app_req(app);
        c.invalid(format!("app.kind {n}"), apps("UpdateApp"), &req, "app.kind");
    }

    // --- Fields the domain refuses once parsed ------------------------------
    c.category = "bad field";
    let while_using = pb::Answer::AllowWhileUsing as i32;
    let req = record_req("wxloc", "new", "scope.camera", while_using);
    c.invalid(
        "ALLOW_WHILE_USING for camera",
        auth("RecordDecision"),
        &req,
        "answer",
    );
    let req = update_req("wxloc", "alice", &[], 0);
    c.invalid(
        "nothing to change",
        auth("UpdateSetting"),
        &req,
        "both empty",
    );
    let while_using = pb::LocationOption::WhileUsing as i32;
    let req = update_req(
        "wxloc",
        "alice",
        &[("scope.userLocation", false)],
        while_using,
    );
    c.invalid(
        "location item and location toggle",
        auth("UpdateSetting"),
        &req,
        "location",
    );
    let toggles = [
        ("scope.userLocation", false),
        ("scope.userLocationBackground", true),
    ];
    let req = update_req("wxloc", "carol", &toggles, 0);
    c.invalid(
        "background on, location off",
        auth("UpdateSetting"),
        &req,
        "auth_setting",
    );
    let req = pb::WatchRequest {
        start_revision: Some(u64::MAX),
        ..Default::default()
    };
    let wire = Wire::Message(req.encode_to_vec().into());
    c.add(
        "start_revision u64::MAX",
        auth("Watch"),
        wire,
        Code::OutOfRange,
    );
    c.invalid(
        "app missing",
        apps("RegisterApp"),
        &pb::RegisterAppRequest { app: None },
        "app is required",
    );
    c.invalid(
        "app missing",
        apps("UpdateApp"),
        &pb::UpdateAppRequest { app: None },
        "app is required",
    );

    c.category = "too many";
    for n in [0, 65, 1000, BIG_LIST] {
        let scopes = (0..n)
            .map(|i| CATALOG[i % CATALOG.len()].name.to_owned())
            .collect();
        let req = batch_req("wxloc", "alice", scopes);
        c.invalid(
            format!("{n} scopes"),
            auth("BatchAuthorize"),
            &req,
            "scopes must hold",
        );
    }
    for n in [convert::MAX_WATCH_FILTER + 1, BIG_LIST] {
        let many = |s: &str| vec![s.to_owned(); n];
        let req = watch(many("wxloc"), vec![], vec![]);
        c.invalid(format!("{n} app_ids"), auth("Watch"), &req, "app_ids");
        let req = watch(vec![], many("alice"), vec![]);
        c.invalid(format!("{n} user_ids"), auth("Watch"), &req, "user_ids");
        let req = watch(vec![], vec![], many("scope.camera"));
        c.invalid(format!("{n} scopes"), auth("Watch"), &req, "scopes");
    }

    c.category = "bad declarations";
    let big_desc = "d".repeat(BIG_BYTES);
    let big_mode = "m".repeat(65_536);
    let declarations: Vec<(&str, pb::App, &'static str)> = vec![
        (
            "empty desc",
            location_app("wx").desc_for_with("scope.camera", ""),
            "app.permission",
        ),
        (
            "blank desc",
            location_app("wx").desc_for_with("scope.camera", " \t\u{3000}"),
            "app.permission",
        ),
        (
            "257-char desc",
            location_app("wx").desc_for_with("scope.camera", &"é".repeat(257)),
            "app.permission",
        ),
        (
            "control char in desc",
            location_app("wx").desc_for_with("scope.camera", "a\u{1b}b"),
            "app.permission",
        ),
        (
            "512 KiB desc",
            location_app("wx").desc_for_with("scope.camera", &big_desc),
            "app.permission",
        ),
        (
            "scope not for mini programs",
            location_app("wx").desc_for_with("scope.gameClubData", "d"),
            "app.permission",
        ),
        (
            "unknown background mode",
            location_app("wx").with_modes(&["location", "gps"]),
            "app.required_background_modes",
        ),
        (
            "10 000 bad background modes",
            location_app("wx").with_modes(&["x"; 10_000]),
            "app.required_background_modes",
        ),
        (
            "64 KiB background mode",
            location_app("wx").with_modes(&[big_mode.as_str()]),
            "app.required_background_modes",
        ),
        (
            "unknown private info",
            location_app("wx").with_infos(&["getLocation", "getSecrets"]),
            "app.required_private_infos",
        ),
        (
            "fuzzy and precise",
            location_app("wx").with_infos(&["getFuzzyLocation", "getLocation"]),
            "mutually exclusive",
        ),
    ];
    for (label, app, needle) in &declarations {
        let mut fresh = app.clone();
        fresh.app_id = "wxfresh".into();
        c.invalid(*label, apps("RegisterApp"), &register_req(fresh), needle);
        let mut existing = app.clone();
        existing.app_id = "wxloc".into();
        c.invalid(*label, apps("UpdateApp"), &update_app_req(existing), needle);
    }

    // --- Import streams with garbage records ----------------------------------
    let mut imports: Vec<(String, Vec<pb::ExportRecord>, Code, &'static str)> = Vec::new();
    let invalid = Code::InvalidArgument;
    let header = |format| pb::ExportRecord {
        record: Some(Record::Header(pb::ExportHeader {
            revision: 1,
            format,
        })),
    };
    imports.push((
        "header format 99".into(),
        vec![header(99)],
        invalid,
        "format",
    ));
    imports.push((
        "header format u64::MAX".into(),
        vec![header(u64::MAX)],
        invalid,
        "format",
    ));
    // The app as stored changes nothing; what follows it is refused.
    let unchanged = app_record(stored_app.clone());
    for (label, app, needle) in &declarations {
        let mut app = app.clone();
        app.app_id = "wxloc".into();
        let records = vec![unchanged.clone(), app_record(app)];
        imports.push((format!("app: {label}"), records, invalid, needle));
    }
    for (what, id) in bad_ids() {
        let records = vec![app_record(bare_app(&id, pb::AppKind::MiniGame))];
        imports.push((format!("app id: {what}"), records, invalid, "app.app_id"));
        let rows = vec![
            decision_record("wxloc", "alice", "scope.camera", GRANTED),
            decision_record(&id, "alice", "scope.camera", GRANTED),
        ];
        imports.push((
            format!("decision app_id: {what}"),
            rows,
            invalid,
            "decision.app_id",
        ));
        let rows = vec![decision_record("wxloc", &id, "scope.camera", DENIED)];
        imports.push((
            format!("decision user_id: {what}"),
            rows,
            invalid,
            "decision.user_id",
        ));
    }
    for (what, scope) in bad_scopes() {
        let rows = vec![decision_record("wxloc", "alice", &scope, GRANTED)];
        imports.push((
            format!("decision scope: {what}"),
            rows,
            invalid,
            "decision.scope",
        ));
    }
    // A pending (changing) row, then a bad one: the batch is never written.
    for n in [0, 1].into_iter().chain(BAD_ENUMS) {
        let rows = vec![
            decision_record("wxloc", "alice", "scope.camera", DENIED),
            decision_record("wxloc", "bob", "scope.record", n),
        ];
        imports.push((
            format!("decision state {n}"),
            rows,
            invalid,
            "decision.state",
        ));
    }
    for scope in ["scope.userInfo", "scope.address", "scope.gameClubData"] {
        let rows = vec![decision_record("wxloc", "alice", scope, GRANTED)];
        imports.push((
            format!("{scope} for a mini program"),
            rows,
            invalid,
            "takes no decisions",
        ));
    }
    let rows = vec![
        decision_record("wxloc", "alice", "scope.camera", DENIED),
        decision_record("wxloc", "erin", "scope.userLocationBackground", GRANTED),
    ];
    imports.push((
        "background without location".into(),
        rows,
        invalid,
        "without location",
    ));
    let rows = vec![decision_record("wxghost", "alice", "scope.camera", GRANTED)];
    imports.push(("unknown app".into(), rows, Code::NotFound, "wxghost"));
    c.category = "bad import record";
    for (label, records, code, needle) in imports {
        let body: Vec<u8> = records
            .iter()
            .flat_map(|r| framed(&r.encode_to_vec()))
            .collect();
        c.add_with(
            label,
            admin("Import"),
            Wire::Body(body.into(), &[]),
            code,
            needle,
        );
    }

    // --- Bytes that are not protobuf, frames that lie -------------------------
    let mut rng = Rng(0x5eed);
    let exact = |body: Vec<u8>| Wire::Body(body.into(), &[]);
    for (method, template, client_streaming) in templates() {
        let p = || path(method.0, method.1);
        let l = |what: &str| format!("{}/{}: {what}", method.0, method.1);
        let internal = Code::Internal;
        c.category = "not protobuf";
        for (what, bytes) in garbage() {
            c.add(l(what), p(), Wire::Message(bytes.into()), internal);
        }
        // A valid (often state-changing) request followed by garbage: the
        // valid part must never run.
        for i in 0..48 {
            let mut bytes = template.clone();
            bytes.push([0x0F, 0x0E, 0x07, 0x0B][i % 4]);
            let n = rng.next() as usize % 64;
            bytes.extend(rng.bytes(n));
            c.add(
                l(&format!("valid request + garbage #{i}")),
                p(),
                Wire::Message(bytes.into()),
                internal,
            );
        }
        c.category = "lying frame";
        let len = template.len() as u32;
        c.add(
            l("length prefix 16 bytes too long"),
            p(),
            exact(frame(0, len + 16, &template)),
            internal,
        );
        let mut body = framed(&template);
        body.extend([0, 0, 0]);
        c.add(l("3 bytes after the frame"), p(), exact(body), internal);
        let mut body = framed(&template);
        body.extend(frame(0, 1, &[0x0F]));
        c.add(l("a garbage second frame"), p(), exact(body), internal);
        c.add(
            l("half a frame header"),
            p(),
            exact(vec![0, 0, 0]),
            internal,
        );
        c.add(
            l("compressed flag, no grpc-encoding"),
            p(),
            exact(frame(1, len, &template)),
            internal,
        );
        c.add(
            l("compressed flag 2"),
            p(),
            exact(frame(2, len, &template)),
            internal,
        );
        c.add(
            l("compressed flag 255"),
            p(),
            exact(frame(0xFF, len, &template)),
            internal,
        );
        let identity = Wire::Body(
            frame(1, len, &template).into(),
            &[("grpc-encoding", "identity")],
        );
        c.add(
            l("compressed flag, grpc-encoding identity"),
            p(),
            identity,
            internal,
        );
        if !client_streaming {
            // An empty Import stream is a valid empty import.
            c.add(l("no message at all"), p(), exact(Vec::new()), internal);
        }
        c.category = "unsupported encoding";
        let gzip = Wire::Body(
            frame(1, len, &template).into(),
            &[("grpc-encoding", "gzip")],
        );
        c.add(l("grpc-encoding gzip"), p(), gzip, Code::Unimplemented);
        let br = Wire::Body(frame(0, len, &template).into(), &[("grpc-encoding", "br")]);
        c.add(l("grpc-encoding br"), p(), br, Code::Unimplemented);
        c.category = "oversized";
        let huge = exact(frame(0, u32::MAX, &template));
        c.add(l("length prefix u32::MAX"), p(), huge, Code::OutOfRange);
        let over = exact(frame(0, OVER_LIMIT as u32, &template));
        c.add(l("length prefix 4 MiB + 1"), p(), over, Code::OutOfRange);
    }
    // Messages over the decoding limit, sent for real.
    c.category = "oversized";
    let huge = "x".repeat(OVER_LIMIT);
    let requests: [(&str, String, Vec<u8>); 3] = [
        (
            "4 MiB app_id",
            auth("Authorize"),
            authorize_req(&huge, "u", "scope.camera").encode_to_vec(),
        ),
        (
            "4 MiB desc",
            apps("RegisterApp"),
            register_req(location_app("wxfresh").desc_for_with("scope.camera", &huge))
                .encode_to_vec(),
        ),
        (
            "4 MiB import record",
            admin("Import"),
            decision_record("wxloc", &huge, "scope.camera", GRANTED).encode_to_vec(),
        ),
    ];
    for (label, path, bytes) in requests {
        c.add_with(
            label,
            path,
            Wire::Message(bytes.into()),
            Code::OutOfRange,
            "too large",
        );
    }

    // --- Unknown methods ------------------------------------------------------
    c.category = "unknown method";
    let long = format!("/{AUTH}/{}", "A".repeat(4096));
    for p in [
        "/consent.v1.Authorization/Nope",
        "/consent.v1.Authorization/authorize",
        "/consent.v1.Authorization/",
        "/consent.v1.Authorization/Authorize/extra",
        "/consent.v1.Nope/Authorize",
        "/consent.v2.Authorization/Authorize",
        "/consent.v1.Apps/Export",
        "/consent.v1.Admin/Authorize",
        "/grpc.health.v1.Health/Nope",
        "/",
        "/%00",
        &long,
    ] {
        let label = format!("{p:.60}");
        c.add(
            label,
            p.to_owned(),
            Wire::Message(Bytes::new()),
            Code::Unimplemented,
        );
    }
    c.list
}

/// Every RPC with a valid encoded request (state-changing where the RPC
/// changes state), and whether it is client-streaming.
fn templates() -> Vec<((&'static str, &'static str), Vec<u8>, bool)> {
    let bytes = |m: &dyn DynMessage| m.encoded().to_vec();
    let authorize = bytes(&authorize_req("wxloc", "alice", "scope.camera"));
    let scopes = vec!["scope.camera".into(), "scope.record".into()];
    let export = pb::ExportRequest {
        include_events: true,
    };
    let list = pb::ListAppsRequest {
        page_size: 5,
        page_token: String::new(),
    };
    let kind = pb::ListScopesRequest {
        kind: pb::AppKind::MiniGame.into(),
    };
    let wxloc = pb::GetAppRequest {
        app_id: "wxloc".into(),
    };
    vec![
        ((AUTH, "Authorize"), authorize.clone(), false),
        ((AUTH, "Explain"), authorize, false),
        (
            (AUTH, "BatchAuthorize"),
            bytes(&batch_req("wxloc", "alice", scopes)),
            false,
        ),
        (
            (AUTH, "CheckApi"),
            bytes(&check_req("wxloc", "alice", "wx.getLocation")),
            false,
        ),
        (
            (AUTH, "RecordDecision"),
            bytes(&record_req("wxloc", "new", "scope.camera", ALLOW)),
            false,
        ),
        ((AUTH, "GetSetting"), bytes(&pair("wxloc", "alice")), false),
        ((AUTH, "OpenSetting"), bytes(&pair("wxloc", "alice")), false),
        (
            (AUTH, "UpdateSetting"),
            bytes(&update_req("wxloc", "alice", &[("scope.camera", false)], 0)),
            false,
        ),
        ((AUTH, "RemoveApp"), bytes(&pair("wxloc", "alice")), false),
        ((AUTH, "ListScopes"), bytes(&kind), false),
        ((AUTH, "GetRules"), Vec::new(), false),
        ((AUTH, "Watch"), Vec::new(), false),
        (
            (APPS, "RegisterApp"),
            bytes(&register_req(location_app("wxfresh"))),
            false,
        ),
        (
            (APPS, "UpdateApp"),
            bytes(&update_app_req(bare_app("wxloc", pb::AppKind::MiniProgram))),
            false,
        ),
        ((APPS, "GetApp"), bytes(&wxloc), false),
        ((APPS, "ListApps"), bytes(&list), false),
        ((APPS, "DeleteApp"), bytes(&wxloc), false),
        ((ADMIN, "Compact"), Vec::new(), false),
        ((ADMIN, "Verify"), Vec::new(), false),
        ((ADMIN, "Export"), bytes(&export), false),
        (
            (ADMIN, "Import"),
            bytes(&decision_record("wxloc", "alice", "scope.camera", DENIED)),
            true,
        ),
    ]
}

/// Object-safe encoding, so one helper takes any request type.
trait DynMessage {
    fn encoded(&self) -> Bytes;
}

impl<M: Message> DynMessage for M {
    fn encoded(&self) -> Bytes {
        self.encode_to_vec().into()
    }
}

/// Declaration tweaks on top of the fixture's apps.
trait Tweak: Sized {
    fn desc_for(self, scope: &str) -> Self {
        self.desc_for_with(scope, "a reason")
    }
    fn desc_for_with(self, scope: &str, desc: &str) -> Self;
    fn with_modes(self, modes: &[&str]) -> Self;
    fn with_infos(self, infos: &[&str]) -> Self;
}

impl Tweak for pb::App {
    fn desc_for_with(mut self, scope: &str, desc: &str) -> Self {
        let desc = pb::PermissionDesc { desc: desc.into() };
        self.permission.insert(scope.into(), desc);
        self
    }

    fn with_modes(mut self, modes: &[&str]) -> Self {
        self.required_background_modes = modes.iter().map(|m| m.to_string()).collect();
        self
    }

    fn with_infos(mut self, infos: &[&str]) -> Self {
        self.required_private_infos = infos.iter().map(|i| i.to_string()).collect();
        self
    }
}

/// Seeds apps and decisions, floods every RPC of the three services with
/// malformed requests (16 in flight), checks each status code, then that the
/// revision and the whole Export are unchanged and normal calls still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_change_nothing() {
    let _heavy = heavy().await;
    let h = TestDaemon::start().await;
    let c = h.client();
    c.register(location_app("wxloc")).await;
    c.register(bare_app("wxgame", pb::AppKind::MiniGame)).await;
    c.answer("wxloc", "alice", "scope.camera", pb::Answer::Allow)
        .await;
    c.answer("wxloc", "alice", "scope.userLocation", pb::Answer::Allow)
        .await;
    c.answer("wxloc", "bob", "scope.record", pb::Answer::Deny)
        .await;
    let both = c
        .answer(
            "wxloc",
            "carol",
            "scope.userLocationBackground",
            pb::Answer::Allow,
        )
        .await;
    assert_eq!(both.len(), 2, "background allow grants both: {both:?}");
    c.answer("wxgame", "dan", "scope.userInfo", pb::Answer::Deny)
        .await;

    let revision = c.revision().await;
    let before = export(&c.channel).await;
    let stored_app = before
        .iter()
        .find_map(|r| match &r.record {
            Some(Record::App(a)) if a.app_id == "wxloc" => Some(a.clone()),
            _ => None,
        })
        .expect("wxloc is exported");
    assert!(
        before
            .iter()
            .any(|r| matches!(r.record, Some(Record::Event(_)))),
        "the export carries the event log"
    );

    let cases = Arc::new(cases(&stored_app));
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let tally = Arc::new(Mutex::new(BTreeMap::<(&'static str, String), usize>::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (cases, next, failures, tally) =
            (cases.clone(), next.clone(), failures.clone(), tally.clone());
        let channel = c.channel.clone();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let sent = tokio::time::timeout(
                    Duration::from_secs(20),
                    send(channel.clone(), &case.path, &case.wire),
                )
                .await;
                let problem = match sent {
                    Err(_) => Some("no answer in 20 s".to_owned()),
                    Ok(Ok(body)) => Some(format!("succeeded ({} bytes)", body.len())),
                    Ok(Err(status)) => {
                        *tally
                            .lock()
                            .unwrap()
                            .entry((case.category, format!("{:?}", status.code())))
                            .or_default() += 1;
                        let message = status.message();
                        if status.code() != case.code {
                            Some(format!("got {:?}: {message:.200}", status.code()))
                        } else if !message.contains(case.needle) {
                            Some(format!("message {message:.200?} lacks {:?}", case.needle))
                        } else {
                            None
                        }
                    }
                };
                if let Some(problem) = problem {
                    failures.lock().unwrap().push(format!(
                        "{} {} [{}]: want {:?}, {problem}",
                        case.category, case.path, case.label, case.code
                    ));
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    let tally = tally.lock().unwrap().clone();
    eprintln!("{} malformed requests in {elapsed:?}:", cases.len());
    for ((category, code), n) in &tally {
        eprintln!("  {category:<22} {code:<18} {n}");
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} cases went wrong:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(40)].join("\n")
    );

    // Nothing changed.
    assert_eq!(c.revision().await, revision, "nothing was committed");
    let after = export(&c.channel).await;
    assert_eq!(after.len(), before.len(), "export length");
    assert!(after == before, "the export changed");
    c.assert_consistent().await;

    // And the daemon still answers normal calls correctly.
    let d = c.decision("wxloc", "alice", "scope.camera").await;
    assert_eq!(d.outcome(), pb::Outcome::Granted);
    let d = c.decision("wxloc", "bob", "scope.record").await;
    assert_eq!(d.outcome(), pb::Outcome::Denied);
    let d = c.decision("wxloc", "zoe", "scope.camera").await;
    assert_eq!(d.outcome(), pb::Outcome::Prompt);
    let changes = c
        .answer("wxloc", "zoe", "scope.camera", pb::Answer::Allow)
        .await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].revision, revision + 1);
    let setting = c.setting("wxloc", "zoe").await;
    assert_eq!(
        setting.auth_setting,
        HashMap::from([("scope.camera".to_owned(), true)])
    );
    assert_eq!(setting.revision, revision + 1);
    h.stop().await;
}
