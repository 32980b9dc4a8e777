//! Outgoing requests are not a way in (contract §4): webhook targets that resolve to loopback,
//! private, link-local, cloud-metadata or otherwise non-public addresses are refused.
//!
//! The check runs on the addresses the connection will actually use — a resolver that drops
//! forbidden ones — so a name that resolves to a public address at validation time and to
//! 127.0.0.1 at send time (DNS rebinding) still cannot reach inside. IP literals never reach a
//! resolver; [`check_url`] covers them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The error a refused target produces (found again in reqwest's error chain).
#[derive(Debug, thiserror::Error)]
pub enum EgressDenied {
    #[error("webhook target {0} resolves only to non-public addresses")]
    NonPublic(String),
    /// Plain HTTP to the internet carries the lead's personal data in clear and can be
    /// rewritten on the way: only https, unless private targets are allowed (a test setup).
    #[error("webhook target must use https (plain http only with QUIZFLOW_WEBHOOK_ALLOW_PRIVATE)")]
    NotHttps,
}

/// True for every address a webhook must not reach.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254, AWS metadata)
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 to anything
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, cloud metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240 // reserved
}

/// Refuses a URL whose host is a forbidden IP literal (names are checked at resolution), or
/// that is not https.
pub fn check_url(url: &str) -> Result<(), EgressDenied> {
    let parsed = reqwest::Url::parse(url).ok();
    let host = parsed.as_ref().and_then(|u| u.host().map(|h| h.to_owned()));
    let ip = match host {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        _ => None,
    };
    if let Some(ip) = ip.filter(|ip| is_forbidden(*ip)) {
        return Err(EgressDenied::NonPublic(ip.to_string()));
    }
    if parsed.as_ref().map(|u| u.scheme()) != Some("https") {
        return Err(EgressDenied::NotHttps);
    }
    Ok(())
}

/// A resolver that keeps only public addresses.
#[derive(Debug, Default)]
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_forbidden(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(EgressDenied::NonPublic(host))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a request error was a refused target.
pub fn is_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<EgressDenied>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden_and_public_ones_are_not() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_forbidden(bad.parse().expect("ip")), "{bad}");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_forbidden(good.parse().expect("ip")), "{good}");
        }
        assert!(check_url("http://127.0.0.1:8080/x").is_err());
        assert!(check_url("http://[::1]/x").is_err());
        assert!(check_url("http://169.254.169.254/latest/meta-data").is_err());
        assert!(check_url("https://crm.example.com/hook").is_ok());
        assert!(matches!(
            check_url("http://crm.example.com/hook"),
            Err(EgressDenied::NotHttps)
        ));
    }
}
