//! Command line forms of object addresses and byte ranges.
//!
//! Parsed before any network call so that a typo is a usage error (exit 2)
//! with an example, not a round trip to the fleet.

use std::fmt;
use std::str::FromStr;

use crate::client::ByteRange;

/// Why `BUCKET/KEY`, `BUCKET[/PREFIX]` or `START-END` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{input:?} has no key; write BUCKET/KEY, e.g. photos/2024/cat.jpg")]
    MissingKey { input: String },
    #[error("{input:?} has no bucket; write BUCKET/KEY, e.g. photos/2024/cat.jpg")]
    MissingBucket { input: String },
    #[error("range {input:?} is not START-END or START-; use byte offsets, e.g. 0-1023 (END is inclusive)")]
    BadRange { input: String },
    #[error(
        "range {input:?} ends before it starts; END is inclusive, e.g. 0-1023 is the first KiB"
    )]
    BackwardsRange { input: String },
    #[error("suffix range {input:?} is not supported; use START-END or START-")]
    SuffixRange { input: String },
}

/// One object: the bucket and the key within it (the key may contain '/').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAddr {
    pub bucket: String,
    pub key: String,
}

impl FromStr for ObjectAddr {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (bucket, key) = match input.split_once('/') {
            Some(parts) => parts,
            None if input.is_empty() => {
                return Err(AddressError::MissingBucket {
                    input: input.to_string(),
                })
            }
            None => {
                return Err(AddressError::MissingKey {
                    input: input.to_string(),
                })
            }
        };
        if bucket.is_empty() {
            return Err(AddressError::MissingBucket {
                input: input.to_string(),
            });
        }
        if key.is_empty() {
            return Err(AddressError::MissingKey {
                input: input.to_string(),
            });
        }
        Ok(Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

impl fmt::Display for ObjectAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bucket, self.key)
    }
}

/// What `ls` lists: a bucket and an optional key prefix ("" lists everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketPrefix {
    pub bucket: String,
    pub prefix: String,
}

impl FromStr for BucketPrefix {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (bucket, prefix) = input.split_once('/').unwrap_or((input, ""));
        if bucket.is_empty() {
            return Err(AddressError::MissingBucket {
                input: input.to_string(),
            });
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// Parses `START-END` (END inclusive, as in HTTP Range) or `START-` (to the end).
pub fn parse_range(input: &str) -> Result<ByteRange, AddressError> {
    let s = input.trim();
    let bad = || AddressError::BadRange {
        input: input.to_string(),
    };
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        return Err(if end.is_empty() {
            bad()
        } else {
            AddressError::SuffixRange {
                input: input.to_string(),
            }
        });
    }
    let parse = |s: &str| -> Result<u64, AddressError> {
        if s.chars().all(|c| c.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let offset = parse(start)?;
    if end.is_empty() {
        return Ok(ByteRange {
            offset,
            length: None,
        });
    }
    let last = parse(end)?;
    if last < offset {
        return Err(AddressError::BackwardsRange {
            input: input.to_string(),
        });
    }
    let length = (last - offset).checked_add(1).ok_or_else(bad)?;
    Ok(ByteRange {
        offset,
        length: Some(length),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Result<ObjectAddr, AddressError> {
        s.parse()
    }

    #[test]
    fn object_addresses_split_at_the_first_slash() {
        let a = addr("photos/2024/cat.jpg").unwrap();
        assert_eq!(a.bucket, "photos");
        assert_eq!(a.key, "2024/cat.jpg");
        assert_eq!(a.to_string(), "photos/2024/cat.jpg");
        assert_eq!(addr("b/k").unwrap().key, "k");
        assert_eq!(addr("b//k").unwrap().key, "/k");
    }

    #[test]
    fn object_addresses_need_bucket_and_key() {
        assert!(matches!(
            addr("photos"),
            Err(AddressError::MissingKey { .. })
        ));
        assert!(matches!(
            addr("photos/"),
            Err(AddressError::MissingKey { .. })
        ));
        assert!(matches!(
            addr("/cat.jpg"),
            Err(AddressError::MissingBucket { .. })
        ));
        assert!(matches!(addr(""), Err(AddressError::MissingBucket { .. })));
        let msg = addr("photos").unwrap_err().to_string();
        assert!(msg.contains("BUCKET/KEY"), "{msg}");
    }

    #[test]
    fn listing_targets_take_an_optional_prefix() {
        let p: BucketPrefix = "photos".parse().unwrap();
        assert_eq!((p.bucket.as_str(), p.prefix.as_str()), ("photos", ""));
        let p: BucketPrefix = "photos/".parse().unwrap();
        assert_eq!((p.bucket.as_str(), p.prefix.as_str()), ("photos", ""));
        let p: BucketPrefix = "photos/2024/".parse().unwrap();
        assert_eq!((p.bucket.as_str(), p.prefix.as_str()), ("photos", "2024/"));
        assert!("/x".parse::<BucketPrefix>().is_err());
        assert!("".parse::<BucketPrefix>().is_err());
    }

    #[test]
    fn ranges_are_inclusive_or_open_ended() {
        assert_eq!(
            parse_range("0-1023"),
            Ok(ByteRange {
                offset: 0,
                length: Some(1024)
            })
        );
        assert_eq!(
            parse_range("10-10"),
            Ok(ByteRange {
                offset: 10,
                length: Some(1)
            })
        );
        assert_eq!(
            parse_range("4096-"),
            Ok(ByteRange {
                offset: 4096,
                length: None
            })
        );
        assert_eq!(
            parse_range(" 5 - 9 "),
            Ok(ByteRange {
                offset: 5,
                length: Some(5)
            })
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in ["", "-", "abc", "1", "1-x", "x-1", "1-2-3", "+1-2", "1--2"] {
            assert!(
                matches!(parse_range(bad), Err(AddressError::BadRange { .. })),
                "{bad:?}: {:?}",
                parse_range(bad)
            );
        }
        assert!(matches!(
            parse_range("-100"),
            Err(AddressError::SuffixRange { .. })
        ));
        assert!(matches!(
            parse_range("10-9"),
            Err(AddressError::BackwardsRange { .. })
        ));
        assert!(matches!(
            parse_range("0-18446744073709551615"),
            Err(AddressError::BadRange { .. })
        ));
    }
}
