//! Which IP addresses a provider may connect to when it fetches a buyer's `url` input.
//!
//! A buyer names the URL, so a provider that fetched anything would let any buyer read the
//! provider's own network: its loopback services, its LAN, a cloud metadata endpoint. Only
//! globally routable unicast addresses pass; every special-purpose range of the IANA IPv4 and
//! IPv6 registries is refused, and IPv6 forms that embed an IPv4 address (mapped, compatible,
//! NAT64, 6to4) are judged by the address they embed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT (RFC 6598).
    SharedCgnat,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// 224/4, ff00::/8.
    Multicast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15, 2001:2::/48.
    Benchmarking,
    /// fc00::/7 (RFC 4193) and the deprecated site-local fec0::/10.
    UniqueLocal,
    /// Other special-purpose ranges: 192.0.0/24, 192.88.99/24, 240/4, 100::/64, 2001::/23,
    /// 64:ff9b:1::/48, and IPv6 outside the global unicast block 2000::/3.
    Reserved,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "loopback address",
            Self::Private => "private address",
            Self::LinkLocal => "link-local address",
            Self::SharedCgnat => "shared (carrier-grade NAT) address",
            Self::Unspecified => "unspecified address",
            Self::Broadcast => "broadcast address",
            Self::Multicast => "multicast address",
            Self::Documentation => "documentation address",
            Self::Benchmarking => "benchmarking address",
            Self::UniqueLocal => "unique-local address",
            Self::Reserved => "reserved address",
        })
    }
}

/// Why `ip` may not be fetched from, or `None` for a globally routable unicast address.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    const RANGES: &[([u8; 4], u32, Blocked)] = &[
        ([0, 0, 0, 0], 8, Blocked::Unspecified),
        ([10, 0, 0, 0], 8, Blocked::Private),
        ([100, 64, 0, 0], 10, Blocked::SharedCgnat),
        ([127, 0, 0, 0], 8, Blocked::Loopback),
        ([169, 254, 0, 0], 16, Blocked::LinkLocal),
        ([172, 16, 0, 0], 12, Blocked::Private),
        ([192, 0, 0, 0], 24, Blocked::Reserved),
        ([192, 0, 2, 0], 24, Blocked::Documentation),
        ([192, 88, 99, 0], 24, Blocked::Reserved),
        ([192, 168, 0, 0], 16, Blocked::Private),
        ([198, 18, 0, 0], 15, Blocked::Benchmarking),
        ([198, 51, 100, 0], 24, Blocked::Documentation),
        ([203, 0, 113, 0], 24, Blocked::Documentation),
        ([224, 0, 0, 0], 4, Blocked::Multicast),
        ([255, 255, 255, 255], 32, Blocked::Broadcast),
        ([240, 0, 0, 0], 4, Blocked::Reserved),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    if ip.is_unspecified() {
        return Some(Blocked::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Blocked::Loopback);
    }
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    // IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d (deprecated, still routed by some
    // stacks) and the NAT64 well-known prefix 64:ff9b::/96 reach the IPv4 address they carry.
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96)
        || in_v6(ip, [0; 8], 96)
        || in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)
    {
        return classify_v4(low_v4);
    }
    // 6to4 2002:a.b.c.d::/48 embeds its relay's IPv4 address in bits 16..48.
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        let embedded = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return classify_v4(embedded);
    }
    const RANGES: &[([u16; 8], u32, Blocked)] = &[
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, Blocked::Reserved),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Blocked::Reserved),
        ([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48, Blocked::Benchmarking),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            Blocked::Documentation,
        ),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Blocked::Reserved),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, Blocked::Documentation),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Blocked::UniqueLocal),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, Blocked::LinkLocal),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, Blocked::UniqueLocal),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Blocked::Multicast),
    ];
    let special = RANGES
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map(|(_, _, why)| *why);
    // Outside 2000::/3 nothing is allocated for global unicast.
    special.or_else(|| (!in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3)).then_some(Blocked::Reserved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ip: &str) -> Option<Blocked> {
        classify(ip.parse().expect("an IP address"))
    }

    #[test]
    fn every_special_ipv4_range_is_refused_at_both_ends() {
        use Blocked::*;
        for (first, last, why) in [
            ("0.0.0.0", "0.255.255.255", Unspecified),
            ("10.0.0.0", "10.255.255.255", Private),
            ("100.64.0.0", "100.127.255.255", SharedCgnat),
            ("127.0.0.0", "127.255.255.255", Loopback),
            ("169.254.0.0", "169.254.255.255", LinkLocal),
            ("172.16.0.0", "172.31.255.255", Private),
            ("192.0.0.0", "192.0.0.255", Reserved),
            ("192.0.2.0", "192.0.2.255", Documentation),
            ("192.88.99.0", "192.88.99.255", Reserved),
            ("192.168.0.0", "192.168.255.255", Private),
            ("198.18.0.0", "198.19.255.255", Benchmarking),
            ("198.51.100.0", "198.51.100.255", Documentation),
            ("203.0.113.0", "203.0.113.255", Documentation),
            ("224.0.0.0", "239.255.255.255", Multicast),
            ("240.0.0.0", "255.255.255.254", Reserved),
            ("255.255.255.255", "255.255.255.255", Broadcast),
        ] {
            assert_eq!(c(first), Some(why), "{first}");
            assert_eq!(c(last), Some(why), "{last}");
        }
    }

    #[test]
    fn public_ipv4_just_outside_the_ranges_passes() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
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
            assert_eq!(c(ip), None, "{ip}");
        }
    }

    #[test]
    fn every_special_ipv6_range_is_refused() {
        use Blocked::*;
        for (ip, why) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf:ffff::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fdff:ffff:ffff::1", UniqueLocal),
            ("fec0::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("2001:db8::1", Documentation),
            ("2001:db8:ffff::1", Documentation),
            ("3fff:fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", Reserved),
            ("2001:1ff::1", Reserved),
            ("100::1", Reserved),
            ("64:ff9b:1::1", Reserved),
            ("fbff:ffff::1", Reserved),
            ("4000::1", Reserved),
            ("::1:0:0:1", Reserved),
            ("::2:1", Unspecified),
        ] {
            assert_eq!(c(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_judged_by_the_ipv4_address() {
        use Blocked::*;
        for (ip, why) in [
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:7f00:1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:100.64.0.1", Some(SharedCgnat)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::ffff:255.255.255.255", Some(Broadcast)),
            ("::127.0.0.1", Some(Loopback)),
            ("::192.168.1.1", Some(Private)),
            ("64:ff9b::127.0.0.1", Some(Loopback)),
            ("64:ff9b::10.0.0.1", Some(Private)),
            ("2002:7f00:1::", Some(Loopback)),
            ("2002:c0a8:101::1", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::8.8.8.8", None),
            ("2002:808:808::1", None),
        ] {
            assert_eq!(c(ip), why, "{ip}");
        }
    }

    #[test]
    fn public_ipv6_passes() {
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
            "2001:200::1",
            "3ffe::1",
        ] {
            assert_eq!(c(ip), None, "{ip}");
        }
    }
}
