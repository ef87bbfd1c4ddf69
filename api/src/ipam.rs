//! Address and port choice, pure: the caller keeps what is taken (persisted) and asks for the
//! next free one.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;

/// The first address of `subnet` (its `.1`), kept for the bridge.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The next free task address of `subnet` after `after` (wrapping around), skipping the
/// network, gateway and broadcast addresses and those `taken`. Going round instead of taking
/// the lowest free address keeps a just-released address (and stale ARP entries for it) out
/// of use for as long as possible.
pub fn next_address(
    subnet: Ipv4Net,
    taken: &BTreeSet<Ipv4Addr>,
    after: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    if first > last {
        return None;
    }
    let start = after
        .map(u32::from)
        .filter(|a| (first..=last).contains(a))
        .map_or(first, |a| if a == last { first } else { a + 1 });
    (start..=last)
        .chain(first..start)
        .map(Ipv4Addr::from)
        .find(|a| !taken.contains(a))
}

/// The next free port of `range` after `after` (wrapping around), not in `taken`.
pub fn next_port(
    range: &RangeInclusive<u16>,
    taken: &BTreeSet<u16>,
    after: Option<u16>,
) -> Option<u16> {
    let (first, last) = (*range.start(), *range.end());
    let start =
        after
            .filter(|p| range.contains(p))
            .map_or(first, |p| if p == last { first } else { p + 1 });
    (start..=last)
        .chain(first..start)
        .find(|p| !taken.contains(p))
}

/// The `index`-th subnet of length `prefix` in `pool`, if there is one.
pub fn nth_subnet(pool: Ipv4Net, prefix: u8, index: u32) -> Option<Ipv4Net> {
    pool.subnets(prefix).ok()?.nth(usize::try_from(index).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_reserved_and_taken_and_go_round() {
        let net: Ipv4Net = "10.42.3.0/29".parse().expect("test value");
        assert_eq!(gateway(net), Ipv4Addr::new(10, 42, 3, 1));
        let mut taken = BTreeSet::new();
        let mut last = None;
        let mut got = Vec::new();
        while let Some(a) = next_address(net, &taken, last) {
            taken.insert(a);
            got.push(a.octets()[3]);
            last = Some(a);
        }
        // .0 network, .1 gateway, .7 broadcast.
        assert_eq!(got, [2, 3, 4, 5, 6]);
        taken.remove(&Ipv4Addr::new(10, 42, 3, 3));
        taken.remove(&Ipv4Addr::new(10, 42, 3, 5));
        // After .6 it wraps and takes .3 before .5.
        assert_eq!(
            next_address(net, &taken, last),
            Some(Ipv4Addr::new(10, 42, 3, 3))
        );
        assert_eq!(
            next_address(net, &taken, Some(Ipv4Addr::new(10, 42, 3, 3))),
            Some(Ipv4Addr::new(10, 42, 3, 5))
        );
        assert_eq!(
            next_address("10.0.0.0/31".parse().expect("test value"), &taken, None),
            None
        );
    }

    #[test]
    fn ports_go_round_and_skip_taken() {
        let r = 100..=103;
        let taken = BTreeSet::from([101]);
        assert_eq!(next_port(&r, &taken, None), Some(100));
        assert_eq!(next_port(&r, &taken, Some(100)), Some(102));
        assert_eq!(next_port(&r, &taken, Some(103)), Some(100));
        assert_eq!(next_port(&(5..=5), &BTreeSet::from([5]), None), None);
    }

    #[test]
    fn subnets_are_carved_in_order() {
        let pool: Ipv4Net = "10.42.0.0/16".parse().expect("test value");
        assert_eq!(
            nth_subnet(pool, 24, 0).expect("test value").to_string(),
            "10.42.0.0/24"
        );
        assert_eq!(
            nth_subnet(pool, 24, 255).expect("test value").to_string(),
            "10.42.255.0/24"
        );
        assert_eq!(nth_subnet(pool, 24, 256), None);
    }
}
