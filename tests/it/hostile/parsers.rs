//! Properties of the parsers: versions, ids, scope and interface names,
//! platforms, clients and enum numbers.

use consentd::{
    domain::{Api, AppId, Platform, UserId, Version, CATALOG},
    grpc::convert,
    pb,
};
use proptest::{collection::vec, prelude::*};

use super::strategies::{
    bounded, config, field_of, hash_of, hostile_string, id_ok, name_like, version_model,
    MAX_SEGMENTS,
};

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
}
