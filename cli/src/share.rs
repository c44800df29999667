//! Share links on the command line: making one (`potluck share`), listing and revoking them,
//! and reading through one without an account (`potluck get LINK`).
//!
//! A link is `<agent HTTP base>/s/<token>` (or the bare token when the agent serves no HTTP),
//! plus `#k=<content key>` for a client-side encrypted object. The fragment is added here and
//! read here: it is never sent to an agent (browsers do not send fragments either).

use std::time::Duration;

use potluck_format::share as token;
use potluck_proto::v1::{CreateShareRequest, ListSharesRequest, RevokeShareRequest, ShareInfo};

use crate::client::{Client, ClientError};
use crate::crypt::ContentKey;

/// A link as given on the command line, decoded (not verified: only agents can).
#[derive(Debug, Clone)]
pub struct Link {
    pub token: String,
    pub bucket: String,
    /// The object to read: the grant's key, or for a prefix grant the key after the token.
    pub key: String,
    pub prefix: bool,
    pub expires_unix: u64,
    /// The `#k=` content key, when the link carries one.
    pub content_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Token(#[from] token::TokenError),
    #[error(
        "this link opens the keys under {prefix:?}; name one: LINK/KEY (e.g. {link}/{prefix}file)"
    )]
    KeyNeeded { prefix: String, link: String },
    #[error("{key:?} is not under {prefix:?}, the prefix this link opens")]
    NotCovered { key: String, prefix: String },
}

/// Whether a command-line argument is a share link rather than BUCKET/KEY.
pub fn looks_like_link(arg: &str) -> bool {
    token::token_of_link(arg).starts_with(token::PREFIX)
}

impl Link {
    pub fn parse(arg: &str) -> Result<Self, LinkError> {
        let t = token::token_of_link(arg);
        let unverified = token::parse(t)?;
        let g = unverified.grant();
        let key = match (g.prefix, token::key_of_link(arg)) {
            (false, _) => g.path.clone(),
            (true, Some(k)) if k.starts_with(&g.path) => k.to_owned(),
            (true, Some(k)) => {
                return Err(LinkError::NotCovered {
                    key: k.to_owned(),
                    prefix: g.path.clone(),
                })
            }
            (true, None) => {
                return Err(LinkError::KeyNeeded {
                    prefix: g.path.clone(),
                    link: arg.split('#').next().unwrap_or(arg).to_owned(),
                })
            }
        };
        Ok(Self {
            token: t.to_owned(),
            bucket: g.bucket.clone(),
            key,
            prefix: g.prefix,
            expires_unix: g.expires_unix,
            content_key: token::fragment_key(arg).map(str::to_owned),
        })
    }
}

/// `24h`, `90m`, `7d`, `3600s` or plain seconds.
pub fn parse_expiry(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; use e.g. 24h, 90m, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in {text:?}; use s, m, h or d")),
    };
    let secs = n
        .checked_mul(mult)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?} is not a usable expiry; use e.g. 24h"))?;
    Ok(Duration::from_secs(secs))
}

/// Asks an agent to sign and record a grant; returns it with the link to hand out.
pub async fn create(
    client: &Client,
    bucket: &str,
    path: &str,
    prefix: bool,
    expires: Duration,
    content_key: Option<&ContentKey>,
) -> Result<(ShareInfo, String), ClientError> {
    let request = client.authorized(CreateShareRequest {
        bucket: bucket.to_owned(),
        path: path.to_owned(),
        prefix,
        expires_in_secs: expires.as_secs(),
    });
    let info = client
        .share_service()
        .create_share(request)
        .await?
        .into_inner();
    let mut link = if info.url.is_empty() {
        info.token.clone()
    } else {
        info.url.clone()
    };
    if let Some(k) = content_key {
        link.push_str("#k=");
        link.push_str(&k.to_text());
    }
    Ok((info, link))
}

pub async fn list(client: &Client, bucket: &str) -> Result<Vec<ShareInfo>, ClientError> {
    let request = client.authorized(ListSharesRequest {
        bucket: bucket.to_owned(),
    });
    Ok(client
        .share_service()
        .list_shares(request)
        .await?
        .into_inner()
        .shares)
}

pub async fn revoke(client: &Client, id: &str) -> Result<ShareInfo, ClientError> {
    let request = client.authorized(RevokeShareRequest { id: id.to_owned() });
    Ok(client
        .share_service()
        .revoke_share(request)
        .await?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries() {
        assert_eq!(parse_expiry("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_expiry("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_expiry("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_expiry("30").unwrap(), Duration::from_secs(30));
        for bad in ["", "0h", "h", "1w", "-1h", "99999999999999999999d"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links() {
        let g = token::Grant {
            id: [1; 16],
            bucket: "photos".into(),
            access_key_id: "pk-1".into(),
            path: "2026/".into(),
            prefix: true,
            expires_unix: 10,
        };
        let t = g.sign(&[2; 32]).unwrap();
        assert!(looks_like_link(&t));
        assert!(!looks_like_link("photos/cat.jpg"));
        let l = Link::parse(&format!("http://h:1/s/{t}/2026/a.jpg#k=abc")).unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.key.as_str()),
            ("photos", "2026/a.jpg")
        );
        assert_eq!(l.content_key.as_deref(), Some("abc"));
        assert_eq!(l.token, t);
        assert!(matches!(
            Link::parse(&format!("http://h:1/s/{t}")),
            Err(LinkError::KeyNeeded { .. })
        ));
        assert!(matches!(
            Link::parse(&format!("{t}/2025/a.jpg")),
            Err(LinkError::NotCovered { .. })
        ));
        assert!(matches!(
            Link::parse("http://h/s/pl1.garbage"),
            Err(LinkError::Token(_))
        ));
    }
}
