//! The client's address behind trusted proxies (`server.trusted_proxies`,
//! `server.client_ip_header`).

use std::net::IpAddr;

use http::HeaderMap;

/// The client address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most forwarded hop that is not itself a trusted proxy. Hops come from the one header
/// the proxies are configured to write (`server.client_ip_header`): `X-Forwarded-For`, or
/// `Forwarded` (RFC 7239 `for=`) — never chosen by what the request carries, since proxies pass
/// the other header through from the client untouched. The list is walked from the right and
/// the walk stops at the first entry that is not an address (malformed, `unknown`, an
/// obfuscated name): everything left of it may have been written by the client.
pub(crate) fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
    use_forwarded: bool,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries = if !use_forwarded {
        // Several headers are one list, in order.
        let mut entries: Vec<String> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            match value.to_str() {
                Ok(s) => entries.extend(s.split(',').map(|e| e.trim().to_owned())),
                Err(_) => entries.push(String::new()), // ends the trustworthy part
            }
        }
        entries
    } else {
        forwarded_hops(headers)
    };
    let mut nearest = peer;
    for entry in entries.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => nearest = ip,
            Ok(ip) => return ip,
            Err(_) => return nearest,
        }
    }
    nearest
}

/// The `for=` values of every `Forwarded` element, in order, reduced to bare addresses
/// (`"[2001:db8::1]:4711"` → `2001:db8::1`, `192.0.2.1:80` → `192.0.2.1`). Elements without
/// `for=`, and unreadable headers, become an empty entry, which stops the walk there.
fn forwarded_hops(headers: &HeaderMap) -> Vec<String> {
    let mut hops = Vec::new();
    for value in headers.get_all("forwarded") {
        let Ok(s) = value.to_str() else {
            hops.push(String::new());
            continue;
        };
        for element in s.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            });
            let Some(node) = node else {
                hops.push(String::new());
                continue;
            };
            let node = node.trim_matches('"');
            let addr = if let Some(rest) = node.strip_prefix('[') {
                rest.split(']').next().unwrap_or("")
            } else {
                node.split(':').next().unwrap_or("")
            };
            hops.push(addr.to_owned());
        }
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted = vec![crate::config::parse_cidr("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "5.6.7.8".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // A client that is not a trusted proxy cannot spoof its address.
        assert_eq!(client_ip(stranger, &h, &trusted, false), stranger);
        // Spoofed left-most entries are ignored: the right-most untrusted hop wins.
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &trusted, false), proxy);
        // A malformed entry stops the walk: nothing left of it is believed.
        h.insert(
            "x-forwarded-for",
            "9.9.9.9, junk, 10.0.0.5".parse().unwrap(),
        );
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", "9.9.9.9, junk, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Only trusted hops: the left-most of them.
        h.insert("x-forwarded-for", "10.0.0.9, 10.0.0.5".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[], false), proxy);
    }

    #[test]
    fn forwarded_header_is_read_like_x_forwarded_for() {
        let trusted = vec![crate::config::parse_cidr("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.3:80"
                .parse()
                .unwrap(),
        );
        h.insert("x-forwarded-for", "7.7.7.7".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, true),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // The configured header only: a client-sent Forwarded does not override XFF.
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "7.7.7.7".parse::<IpAddr>().unwrap()
        );
        h.insert("forwarded", "for=unknown, for=10.0.0.3".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, true),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
        h.insert("forwarded", "proto=https;for=192.0.2.60".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, true),
            "192.0.2.60".parse::<IpAddr>().unwrap()
        );
        // Not from a trusted proxy: ignored.
        let stranger: IpAddr = "5.6.7.8".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted, true), stranger);
    }
}
