//! Host platforms and the client description every check carries.

use std::{fmt, str::FromStr};

use super::Version;

/// The host client's platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    Ios,
    Android,
    Ohos,
    Windows,
    Mac,
    Devtools,
}

impl Platform {
    pub const ALL: [Platform; 6] = [
        Platform::Ios,
        Platform::Android,
        Platform::Ohos,
        Platform::Windows,
        Platform::Mac,
        Platform::Devtools,
    ];

    /// The lower-case token used in config files and logs.
    pub fn token(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Ohos => "ohos",
            Platform::Windows => "windows",
            Platform::Mac => "mac",
            Platform::Devtools => "devtools",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.token() == s)
            .ok_or_else(|| {
                let valid: Vec<_> = Platform::ALL.iter().map(|p| p.token()).collect();
                format!(
                    "unknown platform {s:?}; valid platforms: {}",
                    valid.join(", ")
                )
            })
    }
}

/// Who is asking: platform, host client version and base library version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub platform: Platform,
    pub host_version: Version,
    pub sdk_version: Version,
}
