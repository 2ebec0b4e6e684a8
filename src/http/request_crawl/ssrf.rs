//! Public-address checks (SSRF) for public requestCrawl: a host the relay is asked to call
//! must resolve, and only to addresses on the public internet. Otherwise anyone could make
//! the relay send requests into its own network (metadata services, databases, admin ports).
//!
//! Two parts:
//! - [`blocked_range`]: a pure function naming the special-purpose range an address is in
//!   (IANA special-purpose registries for v4 and v6), table-tested below. IPv6 forms that
//!   carry an IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64
//!   `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that address. Other IPv6 addresses
//!   must be global unicast (`2000::/3`) outside its special blocks.
//! - [`DnsResolver`]: the lookup, behind a trait so tests can make a name resolve to any
//!   address; [`SystemDns`] is tokio's resolver (the system's `getaddrinfo`). The lookup is
//!   bounded in time and in the number of addresses kept.
//!
//! The addresses that passed are the only ones the describeServer probe connects to (the
//! probe pins them), so a name that answers with a public address to this lookup and a
//! private one to the next (DNS rebinding) cannot redirect the probe.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures_util::future::BoxFuture;

/// Most addresses kept from one lookup.
pub const MAX_ADDRESSES: usize = 16;

/// Resolves a name to socket addresses.
pub trait DnsResolver: Send + Sync + 'static {
    fn lookup(&self, host: &str, port: u16)
    -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// tokio's resolver (`getaddrinfo` on the blocking pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemDns;

impl DnsResolver for SystemDns {
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let target = format!("{host}:{port}");
        Box::pin(async move {
            Ok(tokio::net::lookup_host(target)
                .await?
                .take(MAX_ADDRESSES)
                .collect())
        })
    }
}

/// Why a name did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SsrfRefusal {
    /// No address (lookup failed, timed out or came back empty).
    Unresolvable(String),
    /// An address in a range the relay never calls.
    NotPublic { addr: IpAddr, range: &'static str },
}

/// Resolves `host:port` with `dns` within `timeout` and checks every address. On success,
/// the addresses (at most [`MAX_ADDRESSES`]), all public.
pub async fn resolve_public(
    dns: &dyn DnsResolver,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, SsrfRefusal> {
    let addrs = match tokio::time::timeout(timeout, dns.lookup(host, port)).await {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => return Err(SsrfRefusal::Unresolvable(e.to_string())),
        Err(_) => return Err(SsrfRefusal::Unresolvable("lookup timed out".to_string())),
    };
    if addrs.is_empty() {
        return Err(SsrfRefusal::Unresolvable("no addresses".to_string()));
    }
    let addrs: Vec<SocketAddr> = addrs.into_iter().take(MAX_ADDRESSES).collect();
    // Every address must pass: a client may connect to any of them.
    for a in &addrs {
        if let Some(range) = blocked_range(a.ip()) {
            return Err(SsrfRefusal::NotPublic {
                addr: a.ip(),
                range,
            });
        }
    }
    Ok(addrs)
}

/// The special-purpose range `ip` is in, or `None` for a public address.
pub fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

/// IPv4 special-purpose ranges (RFC 6890 and successors), most specific first.
const V4_BLOCKED: [([u8; 4], u32, &str); 16] = [
    ([255, 255, 255, 255], 32, "broadcast"),
    ([0, 0, 0, 0], 8, "this network / unspecified"),
    ([10, 0, 0, 0], 8, "private"),
    ([100, 64, 0, 0], 10, "shared address space (CGNAT)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments"),
    ([192, 0, 2, 0], 24, "documentation"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast"),
    ([192, 168, 0, 0], 16, "private"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation"),
    ([203, 0, 113, 0], 24, "documentation"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved"),
];

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_BLOCKED
        .iter()
        .find(|(net, bits, _)| in_v4(ip, *net, *bits))
        .map(|(_, _, name)| *name)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

/// IPv6 blocks inside `2000::/3` that are not publicly routed.
const V6_BLOCKED_GLOBAL: [([u16; 8], u32, &str); 3] = [
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    (
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments (Teredo, benchmarking, ORCHID)",
    ),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
];

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let seg = ip.segments();
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated): the IPv4 decides.
    if let Some(v4) = ip.to_ipv4() {
        return blocked_v4(v4);
    }
    // NAT64 well-known prefix: 64:ff9b::a.b.c.d reaches a.b.c.d.
    if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        let v4 = Ipv4Addr::from((u128::from(ip) & 0xffff_ffff) as u32);
        return blocked_v4(v4);
    }
    // 6to4: 2002:AABB:CCDD::/48 tunnels to AA.BB.CC.DD.
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::from((u32::from(seg[1]) << 16) | u32::from(seg[2]));
        return blocked_v4(v4);
    }
    if in_v6(ip, [0xfc00, 0, 0, 0, 0, 0, 0, 0], 7) {
        return Some("unique local");
    }
    if in_v6(ip, [0xfe80, 0, 0, 0, 0, 0, 0, 0], 10) {
        return Some("link-local");
    }
    if in_v6(ip, [0xfec0, 0, 0, 0, 0, 0, 0, 0], 10) {
        return Some("site-local (deprecated)");
    }
    if in_v6(ip, [0xff00, 0, 0, 0, 0, 0, 0, 0], 8) {
        return Some("multicast");
    }
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Some("not global unicast");
    }
    V6_BLOCKED_GLOBAL
        .iter()
        .find(|(net, bits, _)| in_v6(ip, *net, *bits))
        .map(|(_, _, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn every_special_ipv4_range_is_blocked_at_both_ends() {
        for (first, last, name) in [
            ("0.0.0.0", "0.255.255.255", "this network / unspecified"),
            ("10.0.0.0", "10.255.255.255", "private"),
            (
                "100.64.0.0",
                "100.127.255.255",
                "shared address space (CGNAT)",
            ),
            ("127.0.0.0", "127.255.255.255", "loopback"),
            ("169.254.0.0", "169.254.255.255", "link-local"),
            ("172.16.0.0", "172.31.255.255", "private"),
            ("192.0.0.0", "192.0.0.255", "IETF protocol assignments"),
            ("192.0.2.0", "192.0.2.255", "documentation"),
            ("192.88.99.0", "192.88.99.255", "6to4 relay anycast"),
            ("192.168.0.0", "192.168.255.255", "private"),
            ("198.18.0.0", "198.19.255.255", "benchmarking"),
            ("198.51.100.0", "198.51.100.255", "documentation"),
            ("203.0.113.0", "203.0.113.255", "documentation"),
            ("224.0.0.0", "239.255.255.255", "multicast"),
            ("240.0.0.0", "255.255.255.254", "reserved"),
            ("255.255.255.255", "255.255.255.255", "broadcast"),
        ] {
            assert_eq!(blocked_range(v4(first)), Some(name), "{first}");
            assert_eq!(blocked_range(v4(last)), Some(name), "{last}");
        }
    }

    #[test]
    fn public_ipv4_next_to_the_ranges_passes() {
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.112.255",
            "223.255.255.255",
        ] {
            assert_eq!(blocked_range(v4(public)), None, "{public}");
        }
    }

    #[test]
    fn special_ipv6_ranges_are_blocked() {
        for (addr, name) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "unique local"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff00::", "multicast"),
            ("ff02::1", "multicast"),
            ("100::1", "not global unicast"),
            ("64:ff9b:1::1", "not global unicast"),
            ("4000::1", "not global unicast"),
            ("2001:db8::1", "documentation"),
            (
                "2001::1",
                "IETF protocol assignments (Teredo, benchmarking, ORCHID)",
            ),
            (
                "2001:2::1",
                "IETF protocol assignments (Teredo, benchmarking, ORCHID)",
            ),
            ("3fff::1", "documentation"),
        ] {
            assert_eq!(blocked_range(v6(addr)), Some(name), "{addr}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_judged_by_the_ipv4() {
        for (addr, name) in [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:192.168.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:100.64.0.1", "shared address space (CGNAT)"),
            ("::ffff:0.0.0.0", "this network / unspecified"),
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.1", "private"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::1", "loopback"),
            ("2002:c0a8:101::1", "private"),
        ] {
            assert_eq!(blocked_range(v6(addr)), Some(name), "{addr}");
        }
        for public in [
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(blocked_range(v6(public)), None, "{public}");
        }
    }

    #[test]
    fn global_unicast_ipv6_passes() {
        for public in [
            "2001:200::1",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "3ffe::1",
        ] {
            assert_eq!(blocked_range(v6(public)), None, "{public}");
        }
    }

    struct Fixed(Vec<SocketAddr>);

    impl DnsResolver for Fixed {
        fn lookup(&self, _: &str, _: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
            let addrs = self.0.clone();
            Box::pin(async move { Ok(addrs) })
        }
    }

    struct Never;

    impl DnsResolver for Never {
        fn lookup(&self, _: &str, _: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_name_passes_only_when_every_address_is_public() {
        let t = Duration::from_secs(1);
        let public: SocketAddr = "8.8.8.8:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(
            resolve_public(&Fixed(vec![public]), "h", 443, t).await,
            Ok(vec![public])
        );
        assert_eq!(
            resolve_public(&Fixed(vec![public, private]), "h", 443, t).await,
            Err(SsrfRefusal::NotPublic {
                addr: private.ip(),
                range: "private"
            })
        );
        assert!(matches!(
            resolve_public(&Fixed(vec![]), "h", 443, t).await,
            Err(SsrfRefusal::Unresolvable(_))
        ));
        let many = Fixed(vec![public; 100]);
        assert_eq!(
            resolve_public(&many, "h", 443, t).await.unwrap().len(),
            MAX_ADDRESSES
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_never_answers_times_out() {
        let out = resolve_public(&Never, "h", 443, Duration::from_secs(5)).await;
        assert_eq!(
            out,
            Err(SsrfRefusal::Unresolvable("lookup timed out".to_string()))
        );
    }
}
