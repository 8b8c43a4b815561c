//! Dotted numeric versions ("8.0.5", "2.25.0") with zero-padded numeric ordering.

use std::{cmp::Ordering, fmt, hash, str::FromStr};

/// Most segments accepted in a version ("8.0.0.1" has four).
pub const MAX_SEGMENTS: usize = 8;

/// A version compared numerically segment by segment, the shorter padded with
/// zeros: `1.11.0 > 1.9.9`, `8.0 == 8.0.0`. Kept inline (no allocation: two
/// are parsed on every Authorize).
#[derive(Clone, Copy)]
pub struct Version {
    /// The segments as written, then zeros.
    segments: [u32; MAX_SEGMENTS],
    len: u8,
}

/// Why a version string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("is empty")]
    Empty,
    #[error("has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("has an empty segment")]
    EmptySegment,
    #[error("has a non-numeric segment {}", super::quoted(.0))]
    NotNumeric(String),
    #[error("has a segment {} that is too large", super::quoted(.0))]
    TooLarge(String),
}

impl Version {
    /// A version of these segments; `None` for none or beyond
    /// [`MAX_SEGMENTS`] (a parsed version has 1 to 8).
    pub fn new(segments: &[u32]) -> Option<Self> {
        if segments.is_empty() {
            return None;
        }
        let mut v = Self {
            segments: [0; MAX_SEGMENTS],
            len: u8::try_from(segments.len()).ok()?,
        };
        v.segments
            .get_mut(..segments.len())?
            .copy_from_slice(segments);
        Some(v)
    }

    /// The segments as written.
    pub fn segments(&self) -> &[u32] {
        &self.segments[..usize::from(self.len)]
    }

    /// The segments without trailing zeros: the canonical form for Eq and Hash.
    fn significant(&self) -> &[u32] {
        let end = self
            .segments
            .iter()
            .rposition(|&s| s != 0)
            .map_or(0, |i| i + 1);
        &self.segments[..end]
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A well-formed version in one pass over its bytes; anything else
        // takes `parse_checked`, which names what is wrong.
        match Self::parse_well_formed(s) {
            Some(v) => Ok(v),
            None => Self::parse_checked(s),
        }
    }
}

impl Version {
    /// Parses segment by segment, saying what is wrong with the first bad one.
    fn parse_checked(s: &str) -> Result<Self, VersionError> {
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        let mut v = Self {
            segments: [0; MAX_SEGMENTS],
            len: 0,
        };
        for part in s.split('.') {
            let Some(slot) = v.segments.get_mut(usize::from(v.len)) else {
                return Err(VersionError::TooManySegments);
            };
            if part.is_empty() {
                return Err(VersionError::EmptySegment);
            }
            if !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(VersionError::NotNumeric(part.to_owned()));
            }
            *slot = part
                .parse::<u32>()
                .map_err(|_| VersionError::TooLarge(part.to_owned()))?;
            v.len += 1;
        }
        Ok(v)
    }

    /// `s` if it is 1 to [`MAX_SEGMENTS`] non-empty runs of digits, each
    /// within u32, separated by dots; `None` otherwise.
    fn parse_well_formed(s: &str) -> Option<Self> {
        let mut v = Self {
            segments: [0; MAX_SEGMENTS],
            len: 0,
        };
        let (mut segment, mut digits) = (0u32, 0usize);
        for &b in s.as_bytes() {
            if b == b'.' {
                if digits == 0 {
                    return None;
                }
                *v.segments.get_mut(usize::from(v.len))? = segment;
                v.len += 1;
                (segment, digits) = (0, 0);
            } else if b.is_ascii_digit() {
                segment = segment.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
                digits += 1;
            } else {
                return None;
            }
        }
        if digits == 0 {
            return None;
        }
        *v.segments.get_mut(usize::from(v.len))? = segment;
        v.len += 1;
        Some(v)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Both are padded with zeros to the same length.
        self.segments.cmp(&other.segments)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Version {}

impl hash::Hash for Version {
    fn hash<H: hash::Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments().iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn new_takes_at_most_max_segments() {
        let eight = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(Version::new(&eight).unwrap().to_string(), "1.2.3.4.5.6.7.8");
        assert_eq!(Version::new(&eight).unwrap().segments(), eight);
        assert!(Version::new(&[1; MAX_SEGMENTS + 1]).is_none());
        assert!(Version::new(&[]).is_none());
        assert_eq!(Version::new(&[8, 0]).unwrap(), v("8.0.0"));
        assert_eq!(format!("{:?}", v("8.0.5")), "Version(8.0.5)");
    }

    #[test]
    fn orders_numerically_with_zero_padding() {
        use Ordering::*;
        let cases = [
            ("8.0", "8.0.0", Equal),
            ("8", "8.0.0.0", Equal),
            ("7.9.99", "8.0.0", Less),
            ("8.0.0.1", "8.0.0", Greater),
            ("10.0.0", "8.0.0", Greater),
            ("1.11.0", "1.9.9", Greater),
            ("2.25", "2.25.0", Equal),
            ("2.100.0", "2.25.0", Greater),
            ("2.9.9", "2.25.0", Less),
            ("08.0.0", "8.0.0", Equal),
            ("0", "0.0.1", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(v(a).cmp(&v(b)), want, "{a} vs {b}");
            assert_eq!(v(b).cmp(&v(a)), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn equal_versions_hash_alike() {
        use std::collections::HashSet;
        let set: HashSet<Version> = ["8.0", "8.0.0", "8"].into_iter().map(v).collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn rejects_malformed_versions() {
        use VersionError::*;
        let cases = [
            ("", Empty),
            ("8..0", EmptySegment),
            (".8", EmptySegment),
            ("8.", EmptySegment),
            ("a.b", NotNumeric("a".into())),
            ("8.0.0-beta", NotNumeric("0-beta".into())),
            ("+8", NotNumeric("+8".into())),
            (" 8", NotNumeric(" 8".into())),
            ("99999999999", TooLarge("99999999999".into())),
            ("1.2.3.4.5.6.7.8.9", TooManySegments),
        ];
        for (raw, want) in cases {
            assert_eq!(raw.parse::<Version>().unwrap_err(), want, "{raw:?}");
        }
    }

    #[test]
    fn the_one_pass_parser_agrees_with_the_checked_one() {
        use proptest::prelude::*;
        let runner = |s: &str| {
            let fast = Version::parse_well_formed(s);
            let as_written = |v: Version| v.segments().to_vec();
            assert_eq!(
                fast.map(as_written),
                Version::parse_checked(s).ok().map(as_written),
                "{s:?}"
            );
            assert_eq!(fast.is_some(), s.parse::<Version>().is_ok(), "{s:?}");
        };
        for s in [
            "",
            ".",
            "1.",
            ".1",
            "1..2",
            "8.0.5",
            "007.1",
            "4294967295",
            "4294967296",
            "1.2.3.4.5.6.7.8",
            "1.2.3.4.5.6.7.8.9",
            "1.a",
            "+1",
            "1 ",
            "٣",
        ] {
            runner(s);
        }
        proptest!(|(s in "[0-9.a]{0,24}")| runner(&s));
        proptest!(|(s in "([0-9]{1,11}\\.){0,9}[0-9]{0,11}")| runner(&s));
    }

    #[test]
    fn displays_as_parsed() {
        assert_eq!(v("8.0.0.1").to_string(), "8.0.0.1");
    }
}
