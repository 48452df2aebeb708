//! The SSRF guard's table: which IP addresses are not the public internet. Upstream
//! connections check the address they are about to connect to against it, so that a name an
//! agent may reach (or a DNS answer that changes under it) cannot lead to loopback, the pod's
//! network, or a cloud metadata service unless a route says `allow_private: true`.
//!
//! Addresses that embed an IPv4 address (IPv4-mapped and -compatible, NAT64, 6to4) are judged
//! by the IPv4 address inside, since that is where the packets can end up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;

/// What kind of address an IP is, for the SSRF guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable: reachable by any route.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16), and deprecated IPv6 site-local fec0::/10.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT; also used for cloud-internal services).
    SharedAddressSpace,
    /// 169.254.0.0/16 (incl. the 169.254.169.254 metadata service), fe80::/10.
    LinkLocal,
    /// fc00::/7 (incl. AWS's metadata service fd00:ec2::254).
    UniqueLocal,
    /// 0.0.0.0/8, :: — "this host" on most systems.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Special-purpose and documentation ranges no upstream lives in (192.0.0.0/24,
    /// 192.0.2.0/24, 198.18.0.0/15, 198.51.100.0/24, 203.0.113.0/24, 240.0.0.0/4, 100::/64,
    /// 2001::/32 Teredo, 2001:db8::/32, local-use NAT64 64:ff9b:1::/48).
    Reserved,
}

impl AddressClass {
    /// Whether any route may connect to it (the others need `allow_private: true`).
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }

    /// Lower-case words for messages: "link-local".
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::SharedAddressSpace => "shared (CGNAT)",
            AddressClass::LinkLocal => "link-local",
            AddressClass::UniqueLocal => "unique-local",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The guard every upstream connection goes through: public addresses pass; the others only
/// for a route with `allow_private`, or when they fall in a range the operator allowed for all
/// connections (`upstream.allow_ranges`, e.g. a corporate network reached by blind tunnels).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressGuard {
    allowed: Vec<IpNet>,
}

impl AddressGuard {
    pub fn new(allowed: Vec<IpNet>) -> AddressGuard {
        AddressGuard { allowed }
    }

    /// Whether `ip` may be connected to; `allow_private` is the route's flag. Refused: the
    /// address's class.
    pub fn check(&self, ip: IpAddr, allow_private: bool) -> Result<(), AddressClass> {
        let class = classify(ip);
        if class.is_public() || allow_private || self.in_allowed(ip) {
            return Ok(());
        }
        Err(class)
    }

    fn in_allowed(&self, ip: IpAddr) -> bool {
        let inner = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed
            .iter()
            .any(|net| net.contains(&ip) || inner.is_some_and(|v4| net.contains(&v4)))
    }
}

/// The class of `ip`.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddressClass::Unspecified,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (192, 168, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedAddressSpace,
        (169, 254, _) => AddressClass::LinkLocal,
        (224..=239, _, _) => AddressClass::Multicast,
        (255, 255, 255) if ip == Ipv4Addr::BROADCAST => AddressClass::Broadcast,
        (240..=255, _, _) => AddressClass::Reserved,
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Reserved,
        (198, 18..=19, _) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    match s[0] {
        0xfe80..=0xfebf => AddressClass::LinkLocal,
        0xfec0..=0xfeff => AddressClass::Private,
        0xfc00..=0xfdff => AddressClass::UniqueLocal,
        0xff00..=0xffff => AddressClass::Multicast,
        // 2001::/32 Teredo (the IPv4 inside is obfuscated) and 2001:db8::/32 documentation.
        0x2001 if s[1] == 0 || s[1] == 0x0db8 => AddressClass::Reserved,
        // 100::/64 discard-only.
        0x0100 if s[1..4] == [0, 0, 0] => AddressClass::Reserved,
        // 64:ff9b:1::/48 local-use NAT64.
        0x0064 if s[1] == 0xff9b && s[2] == 1 => AddressClass::Reserved,
        // The rest of ::/8 is reserved; global unicast is 2000::/3.
        0x0000..=0x00ff => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// The IPv4 address an IPv6 address carries, where packets to it end up at that IPv4 address:
/// ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible, deprecated), 64:ff9b::a.b.c.d (NAT64),
/// 2002:aabb:ccdd::/48 (6to4).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low()),
        [0, 0, 0, 0, 0, 0, _, _] => Some(low()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn ipv4_ranges() {
        let cases = [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("192.168.1.1", Private),
            ("192.169.0.1", Public),
            ("100.64.0.1", SharedAddressSpace),
            ("100.100.100.200", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("100.128.0.0", Public),
            ("100.63.255.255", Public),
            ("169.254.169.254", LinkLocal),
            ("169.254.170.2", LinkLocal),
            ("169.255.0.1", Public),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("198.20.0.1", Public),
            ("198.51.100.7", Reserved),
            ("203.0.113.9", Reserved),
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("93.184.215.14", Public),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_ranges() {
        let cases = [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("fc00::1", UniqueLocal),
            ("fd00:ec2::254", UniqueLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Reserved),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Reserved),
            ("100::1", Reserved),
            ("64:ff9b:1::a00:1", Reserved),
            ("::2:0:0:1", Reserved),
            ("2606:4700:4700::1111", Public),
            ("2a00:1450:4001:82a::200e", Public),
            ("2001:4860:4860::8888", Public),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4_inside() {
        let cases = [
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("::169.254.169.254", LinkLocal),
            ("::8.8.8.8", Public),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::808:808", Public),
            ("2002:7f00:1::1", Loopback),
            ("2002:a9fe:a9fe::", LinkLocal),
            ("2002:c0a8:101::1", Private),
            ("2002:808:808::1", Public),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn the_guard_lets_public_addresses_through_and_others_by_route_or_range() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = AddressGuard::default();
        assert_eq!(none.check(ip("8.8.8.8"), false), Ok(()));
        assert_eq!(none.check(ip("127.0.0.1"), false), Err(Loopback));
        assert_eq!(none.check(ip("169.254.169.254"), false), Err(LinkLocal));
        assert_eq!(none.check(ip("127.0.0.1"), true), Ok(()));
        let some = AddressGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd12:3456::/32".parse().unwrap(),
        ]);
        assert_eq!(some.check(ip("127.0.0.9"), false), Ok(()));
        assert_eq!(some.check(ip("::ffff:127.0.0.9"), false), Ok(()));
        assert_eq!(some.check(ip("fd12:3456::1"), false), Ok(()));
        assert_eq!(some.check(ip("fd00:ec2::254"), false), Err(UniqueLocal));
        assert_eq!(some.check(ip("10.0.0.1"), false), Err(Private));
        assert_eq!(some.check(ip("::1"), false), Err(Loopback));
    }

    #[test]
    fn only_public_is_public() {
        assert!(Public.is_public());
        for c in [
            Loopback,
            Private,
            SharedAddressSpace,
            LinkLocal,
            UniqueLocal,
            Unspecified,
            Multicast,
            Broadcast,
            Reserved,
        ] {
            assert!(!c.is_public(), "{c}");
        }
    }
}
