//! Platform-version rules (SPEC section 5): data plus one pure evaluator.

use super::{Api, Client, Platform, Scope, Version};

/// The popup for `scope` exists only on `platforms` from `min_host_version`
/// on; elsewhere a never-asked scope is SETTINGS_REQUIRED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PopupRule {
    pub id: String,
    pub scope: Scope,
    pub platforms: Vec<Platform>,
    pub min_host_version: Version,
}

/// What a base-library minimum applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MinSdkTarget {
    /// An interface name; "wx.authorize" applies to Authorize calls.
    Api(String),
    /// A scope: Authorize of it and every interface of it.
    Scope(Scope),
}

/// Below `min_sdk_version` the target does not exist: UNSUPPORTED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinSdkRule {
    pub id: String,
    pub target: MinSdkTarget,
    pub min_sdk_version: Version,
}

/// The rules in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub popup: Vec<PopupRule>,
    pub min_sdk: Vec<MinSdkRule>,
}

/// The interface name whose minimum applies to Authorize calls.
pub const AUTHORIZE_API: &str = "wx.authorize";

/// What is being asked: `wx.authorize` on a scope, or an interface of it.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Authorize,
    Api(&'a Api),
}

impl Default for RuleSet {
    /// The platform's documented rules.
    fn default() -> Self {
        let v = |s: &str| s.parse::<Version>().expect("built-in versions parse");
        RuleSet {
            popup: vec![PopupRule {
                id: "background-location-popup".into(),
                scope: Scope::UserLocationBackground,
                platforms: vec![Platform::Android, Platform::Ios],
                min_host_version: v("8.0.0"),
            }],
            min_sdk: vec![
                MinSdkRule {
                    id: "authorize-min-sdk".into(),
                    target: MinSdkTarget::Api(AUTHORIZE_API.into()),
                    min_sdk_version: v("1.2.0"),
                },
                MinSdkRule {
                    id: "background-location-min-sdk".into(),
                    target: MinSdkTarget::Scope(Scope::UserLocationBackground),
                    min_sdk_version: v("2.8.0"),
                },
                MinSdkRule {
                    id: "fuzzy-location-min-sdk".into(),
                    target: MinSdkTarget::Scope(Scope::UserFuzzyLocation),
                    min_sdk_version: v("2.25.0"),
                },
            ],
        }
    }
}

impl RuleSet {
    /// The first min-sdk rule that `client` fails for `scope` asked through
    /// `target`, if any.
    pub fn failed_min_sdk(
        &self,
        scope: Scope,
        target: Target<'_>,
        client: &Client,
    ) -> Option<&MinSdkRule> {
        self.min_sdk.iter().find(|rule| {
            let applies = match (&rule.target, target) {
                (MinSdkTarget::Scope(s), _) => *s == scope,
                (MinSdkTarget::Api(name), Target::Authorize) => name == AUTHORIZE_API,
                (MinSdkTarget::Api(name), Target::Api(api)) => name == api.name(),
            };
            applies && client.sdk_version < rule.min_sdk_version
        })
    }

    /// The first popup rule for `scope` that `client` does not meet, if any:
    /// that client cannot show the popup.
    pub fn failed_popup(&self, scope: Scope, client: &Client) -> Option<&PopupRule> {
        self.popup.iter().find(|rule| {
            rule.scope == scope
                && !(rule.platforms.contains(&client.platform)
                    && client.host_version >= rule.min_host_version)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(platform: Platform, host: &str, sdk: &str) -> Client {
        Client {
            platform,
            host_version: host.parse().unwrap(),
            sdk_version: sdk.parse().unwrap(),
        }
    }

    #[test]
    fn background_popup_needs_android_or_ios_8() {
        let rules = RuleSet::default();
        let cases = [
            (Platform::Android, "8.0.0", true),
            (Platform::Ios, "8.0", true),
            (Platform::Ios, "8.0.0.1", true),
            (Platform::Android, "10.0.0", true),
            (Platform::Android, "7.9.99", false),
            (Platform::Ios, "7", false),
            (Platform::Ohos, "9.0.0", false),
            (Platform::Windows, "8.0.0", false),
            (Platform::Mac, "8.0.0", false),
            (Platform::Devtools, "8.0.0", false),
        ];
        for (platform, host, popup) in cases {
            let c = client(platform, host, "3.0.0");
            let failed = rules.failed_popup(Scope::UserLocationBackground, &c);
            assert_eq!(failed.is_none(), popup, "{platform} {host}");
            assert!(rules.failed_popup(Scope::UserLocation, &c).is_none());
        }
    }

    #[test]
    fn min_sdk_rules_apply_to_their_targets() {
        let rules = RuleSet::default();
        let fuzzy = Api::parse_field("api", "wx.getFuzzyLocation").unwrap();
        let camera = Api::parse_field("api", "camera").unwrap();
        let id = |scope, target, sdk| {
            rules
                .failed_min_sdk(scope, target, &client(Platform::Ios, "8.0.0", sdk))
                .map(|r| r.id.as_str())
        };
        assert_eq!(
            id(Scope::Camera, Target::Authorize, "1.1.9"),
            Some("authorize-min-sdk")
        );
        assert_eq!(id(Scope::Camera, Target::Authorize, "1.2"), None);
        // wx.authorize's minimum does not apply to calling the interface itself.
        assert_eq!(id(Scope::Camera, Target::Api(&camera), "1.1.9"), None);
        assert_eq!(
            id(Scope::UserFuzzyLocation, Target::Api(&fuzzy), "2.9.9"),
            Some("fuzzy-location-min-sdk")
        );
        assert_eq!(
            id(Scope::UserFuzzyLocation, Target::Api(&fuzzy), "2.25"),
            None
        );
        assert_eq!(
            id(Scope::UserFuzzyLocation, Target::Authorize, "2.100.0"),
            None
        );
        assert_eq!(
            id(Scope::UserLocationBackground, Target::Authorize, "2.7.9"),
            Some("background-location-min-sdk")
        );
    }
}
