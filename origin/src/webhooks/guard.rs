//! Where a webhook may point: outbound requests to addresses ops chose are a server-side request
//! forgery risk (the origin sits next to PostgreSQL, Redis and the cluster's metadata service).
//!
//! Two checks, both needed:
//! - **At registration** ([`check_url`]): `http`/`https` only, no user info, a host; an address
//!   literal must be public, and a name must resolve, to public addresses only.
//! - **At every connection** ([`PublicResolver`]): the dispatcher's HTTP client resolves names
//!   through this resolver, which drops every non-public address, and connects to what it
//!   returned: resolve-then-connect on the same answer, so a name that turns private after
//!   registration (DNS rebinding) is refused, not followed. Address literals do not go through
//!   a resolver, so the dispatcher checks them itself ([`literal_allowed`]). Redirects are not
//!   followed (a 3xx is a failed delivery).
//!
//! `WEBHOOK_ALLOW_PRIVATE=1` lifts the address rule (tests and development: the receivers run
//! on 127.0.0.1). Written here because no kept crate classifies addresses for SSRF: `std`'s
//! `is_global` is unstable, and the ranges below are IANA's special-purpose registries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// How long a registration waits for its host's name to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// shared, documentation, benchmarking, multicast, reserved or unspecified).
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 (reaches IPv4)
                || (s[0] == 0x2002) // 6to4 (embeds an IPv4 address)
                || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
                || s[..6] == [0; 6]) // IPv4-compatible ::/96 and the rest of ::/8's start
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata services live here
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || a >= 240) // reserved 240/4
}

/// Whether an address written in a URL may be reached.
pub(crate) fn literal_allowed(ip: IpAddr, allow_private: bool) -> bool {
    allow_private || is_public(ip)
}

/// The address literal of a URL's host, if it is one.
pub(crate) fn host_literal(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// A registration's URL: parsed, of an allowed form, and pointing at allowed addresses (a name
/// is resolved now; the dispatcher resolves it again at every connection). The error is the
/// problem's detail.
pub(crate) async fn check_url(text: &str, allow_private: bool) -> Result<Url, String> {
    if text.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let url = Url::parse(text).map_err(|e| format!("not an absolute URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!(
            "scheme {:?}: only https (or http) is delivered to",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user name or password (the signature authenticates)".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    let host = url.host_str().ok_or("must name a host")?.to_owned();
    if let Some(ip) = host_literal(&url) {
        if !literal_allowed(ip, allow_private) {
            return Err(format!(
                "{ip} is not a public address (loopback, private, link-local and reserved ranges are refused)"
            ));
        }
        return Ok(url);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::net::lookup_host((host.as_str(), port));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| format!("host {host:?} did not resolve within {RESOLVE_TIMEOUT:?}"))?
        .map_err(|e| format!("host {host:?} does not resolve: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("host {host:?} does not resolve"));
    }
    if let Some(bad) = addrs
        .iter()
        .find(|a| !literal_allowed(a.ip(), allow_private))
    {
        return Err(format!(
            "host {host:?} resolves to {}, not a public address",
            bad.ip()
        ));
    }
    Ok(url)
}

/// The dispatcher's resolver: the system's answer, less every address not allowed; an error
/// when nothing is left (the connection is never attempted).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublicResolver {
    pub allow_private: bool,
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| literal_allowed(a.ip(), allow_private))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn private_loopback_link_local_and_reserved_addresses_are_not_public() {
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(text)), "{text} counted as public");
        }
    }

    #[test]
    fn internet_addresses_are_public() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(text)), "{text} counted as not public");
        }
    }

    #[tokio::test]
    async fn loopback_and_metadata_urls_are_refused_unless_private_is_allowed() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9000/hook",
            "http://10.0.0.5/hook",
        ] {
            let refused = check_url(url, false).await;
            assert!(refused.is_err(), "{url} was accepted");
            assert!(
                check_url(url, true).await.is_ok(),
                "{url} refused with the flag"
            );
        }
    }

    #[tokio::test]
    async fn other_schemes_credentials_and_garbage_are_refused() {
        for url in [
            "ftp://1.1.1.1/x",
            "file:///etc/passwd",
            "https://user:pw@1.1.1.1/",
            "https://1.1.1.1/#frag",
            "not a url",
            "gopher://1.1.1.1",
        ] {
            assert!(check_url(url, true).await.is_err(), "{url} was accepted");
        }
        assert!(check_url("https://1.1.1.1/hooks?x=1", false).await.is_ok());
    }

    #[tokio::test]
    async fn the_resolver_drops_addresses_that_are_not_allowed() {
        let strict = PublicResolver {
            allow_private: false,
        };
        let name: Name = "localhost".parse().expect("a name");
        assert!(strict.resolve(name).await.is_err());
        let lax = PublicResolver {
            allow_private: true,
        };
        let name: Name = "localhost".parse().expect("a name");
        let found: Vec<SocketAddr> = lax.resolve(name).await.expect("resolves").collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()) && !found.is_empty());
    }
}
