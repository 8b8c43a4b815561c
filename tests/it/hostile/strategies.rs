//! What the property tests generate and the models they check against:
//! hostile strings, catalog near misses, the version grammar, stored
//! decisions that keep the location invariant.

use std::hash::{DefaultHasher, Hash, Hasher};

use consentd::domain::{
    App, AppId, AppKind, Change, DecisionState, Declarations, DomainError, Scope, UserDecisions,
    Version, VersionError, CATALOG, MAX_ID_LEN,
};
use proptest::{collection::vec, prelude::*, sample::select};

/// Segments a version may have (notes/semantics.md: 1 to 8).
pub(super) const MAX_SEGMENTS: usize = 8;

pub(super) fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Characters that break parsers: anything, ASCII (controls included), and
/// look-alikes of the characters ids, versions and scopes are made of.
pub(super) fn hostile_char() -> BoxedStrategy<char> {
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
pub(super) fn hostile_string() -> BoxedStrategy<String> {
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
pub(super) fn name_like() -> BoxedStrategy<String> {
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
pub(super) fn version_model(s: &str) -> Result<Vec<u32>, VersionError> {
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

pub(super) fn hash_of(v: &Version) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The documented id rule: 1 to 128 bytes, no control or whitespace character.
pub(super) fn id_ok(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && !raw.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Half the 16 KiB header list hyper's HTTP/2 client accepts: a status
/// message beyond it kills the client's connection, every call on it.
pub(super) const MAX_WIRE_MESSAGE: usize = 8 * 1024;

/// The length of `message` as the grpc-message header carries it
/// (percent-encoded), asserted to stay under [`MAX_WIRE_MESSAGE`].
pub(super) fn bounded(e: &DomainError) -> Result<(), TestCaseError> {
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

pub(super) fn field_of(e: &DomainError) -> &str {
    match e {
        DomainError::InvalidArgument { field, .. } => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

pub(super) fn scope_strategy() -> impl Strategy<Value = Scope> {
    (0..CATALOG.len()).prop_map(|i| CATALOG[i].scope)
}

pub(super) fn state_strategy() -> impl Strategy<Value = DecisionState> {
    select(vec![
        DecisionState::NotDetermined,
        DecisionState::Granted,
        DecisionState::Denied,
    ])
}

pub(super) fn kind_strategy() -> impl Strategy<Value = AppKind> {
    select(vec![AppKind::MiniProgram, AppKind::MiniGame])
}

/// Stored decisions as the store can hold them: decided scopes only, and
/// background GRANTED only with location GRANTED.
pub(super) fn stored_decisions() -> impl Strategy<Value = UserDecisions> {
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

pub(super) fn test_app(kind: AppKind, background_location: bool) -> App {
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
pub(super) fn apply_checked(
    before: &UserDecisions,
    changes: &[Change],
) -> Result<UserDecisions, String> {
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

/// A Watch filter list: usually a few arbitrary entries, sometimes a valid
/// `filler` repeated to around the 1000-entry limit with one arbitrary
/// entry somewhere in it.
pub(super) fn watch_list(
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
