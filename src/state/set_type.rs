//! ipset types and their members.
//!
//! A wished member is checked against its set's kind before anything runs,
//! and written the way `ipset save` prints it, so that an unchanged set never
//! looks different from the wish (`10.0.0.1/32` is printed as `10.0.0.1`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One part of a set's element, as named in the type (`hash:ip,port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Ip,
    Net,
    Port,
    Mac,
    Mark,
    Iface,
    Set,
}

/// Every type `ipset` supports, as `METHOD:PARTS`.
pub const KNOWN_TYPES: &[&str] = &[
    "bitmap:ip",
    "bitmap:ip,mac",
    "bitmap:port",
    "hash:ip",
    "hash:mac",
    "hash:ip,mac",
    "hash:net",
    "hash:net,net",
    "hash:ip,port",
    "hash:net,port",
    "hash:ip,port,ip",
    "hash:ip,port,net",
    "hash:ip,mark",
    "hash:net,port,net",
    "hash:net,iface",
    "list:set",
];

/// The address family a set holds (`family inet6` in its header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetFamily {
    Inet,
    Inet6,
}

/// A validated set type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetType {
    name: String,
    parts: Vec<Part>,
}

impl SetType {
    /// Accepts only the types in [`KNOWN_TYPES`].
    pub fn parse(name: &str) -> Option<SetType> {
        if !KNOWN_TYPES.contains(&name) {
            return None;
        }
        let (method, parts) = name.split_once(':')?;
        let parts = parts
            .split(',')
            .map(|p| match (method, p) {
                ("list", "set") => Some(Part::Set),
                (_, "ip") => Some(Part::Ip),
                (_, "net") => Some(Part::Net),
                (_, "port") => Some(Part::Port),
                (_, "mac") => Some(Part::Mac),
                (_, "mark") => Some(Part::Mark),
                (_, "iface") => Some(Part::Iface),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(SetType {
            name: name.to_string(),
            parts,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the kernel lets `ipset swap` exchange a set of this type with
    /// one of `other` (same family assumed): it compares the types'
    /// features, in which a network counts as an address that can take
    /// `nomatch`.
    pub fn swappable_with(&self, other: &str) -> bool {
        let Some(other) = SetType::parse(other) else {
            return false;
        };
        let features = |t: &SetType| {
            let parts: Vec<Part> = t
                .parts
                .iter()
                .map(|p| if *p == Part::Net { Part::Ip } else { *p })
                .collect();
            (parts, t.parts.contains(&Part::Net))
        };
        features(self) == features(&other)
    }

    fn is_bitmap(&self) -> bool {
        self.name.starts_with("bitmap:")
    }

    /// Checks one member and returns the elements `ipset save` will print
    /// for it: in a set of single addresses (`hash:ip`, `bitmap:ip`) a
    /// network or a range is stored, and printed, address by address.
    pub fn expand_member(&self, member: &str, family: SetFamily) -> Result<Vec<String>, String> {
        if self.is_plain_address(member, family) {
            return Ok(vec![member.to_string()]);
        }
        self.expand_member_slow(member, family)
    }

    /// [`SetType::expand_member`] appending to `out`, the member copied as
    /// it is when it already is as `ipset save` prints it: a
    /// 1,000,000-member set of plain IPv4 addresses or networks then costs
    /// no allocation per member here.
    pub fn expand_into(
        &self,
        member: &str,
        family: SetFamily,
        out: &mut crate::state::Members,
    ) -> Result<(), String> {
        if self.is_plain_address(member, family) || self.is_plain_network(member, family) {
            out.push(member);
            return Ok(());
        }
        for m in self.expand_member_slow(member, family)? {
            out.push(&m);
        }
        Ok(())
    }

    /// True for a lone IPv4 network in a set of single networks, already
    /// as `ipset save` prints it: its first address, then a prefix of 1 to
    /// 31 written as Rust writes numbers; or a plain address (a /32).
    fn is_plain_network(&self, member: &str, family: SetFamily) -> bool {
        if family != SetFamily::Inet || self.parts != [Part::Net] {
            return false;
        }
        let Some((a, p)) = member.split_once('/') else {
            return member.parse::<Ipv4Addr>().is_ok();
        };
        let (Ok(ip), Ok(prefix)) = (a.parse::<Ipv4Addr>(), p.parse::<u32>()) else {
            return false;
        };
        let host_bits = u32::MAX.checked_shr(prefix).unwrap_or(0);
        (1..32).contains(&prefix) && prefix.to_string() == p && u32::from(ip) & host_bits == 0
    }

    /// True for a lone IPv4 address in a set of single addresses: the
    /// commonest member, already in the form `ipset save` prints (Rust's
    /// parser takes only plain dotted quads, no leading zeros, so the text
    /// is its own canonical form).
    fn is_plain_address(&self, member: &str, family: SetFamily) -> bool {
        family == SetFamily::Inet && self.parts == [Part::Ip] && member.parse::<Ipv4Addr>().is_ok()
    }

    /// The elements ipset stores for one member, part by part: an address
    /// part's network or range is each address; a network part's range is
    /// the fewest aligned networks that cover it (a lone address bare, as
    /// `ipset save` prints a /32); a port range is each port; the member's
    /// elements are every combination of its parts', options after each.
    fn expand_member_slow(&self, member: &str, family: SetFamily) -> Result<Vec<String>, String> {
        let one = self.normalize_member(member, family)?;
        let (element, options) = match one.split_once(' ') {
            Some((e, o)) => (e, format!(" {o}")),
            None => (one.as_str(), String::new()),
        };
        if !element.contains(['-', '/']) {
            return Ok(vec![one.clone()]);
        }
        let count = self.element_count(element);
        if count > MAX_EXPANSION {
            return Err(format!(
                "`{element}` stands for {count} elements; a {} set stores each one, so use \
                 hash:net for networks this large, or fewer ranges",
                self.name
            ));
        }
        let mut elements = vec![String::new()];
        for (i, (part, text)) in self.parts.iter().zip(element.split(',')).enumerate() {
            let pieces = expand_part(*part, text, self.is_bitmap());
            elements = elements
                .iter()
                .flat_map(|head| {
                    pieces.iter().map(move |piece| match i {
                        0 => piece.clone(),
                        _ => format!("{head},{piece}"),
                    })
                })
                .collect();
        }
        Ok(elements.into_iter().map(|e| e + &options).collect())
    }

    /// Whether the set's elements hold addresses, and so belong to one
    /// family: iptables refuses such a set of the other family in a rule.
    /// `bitmap:port`, `hash:mac` and `list:set` hold none.
    pub fn holds_addresses(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Ip | Part::Net))
    }

    /// True for the hash types, which hold at most `maxelem` elements.
    pub fn is_hash(&self) -> bool {
        self.name.starts_with("hash:")
    }

    /// How many elements the kernel stores for one member, as
    /// [`SetType::expand_member`] gives it: each address of a network or
    /// range in an address part, each network a range in a `hash:net` part
    /// splits into, each port of a port range; the product over the parts
    /// (`10.0.0.0/31,tcp:1-2` is 4).
    pub fn element_count(&self, member: &str) -> u128 {
        let element = member.split(' ').next().unwrap_or(member);
        if !element.contains(['-', '/']) {
            return 1;
        }
        let mut count: u128 = 1;
        for (part, text) in self.parts.iter().zip(element.split(',')) {
            let n = match part {
                Part::Ip => address_span(text).map_or(1, |(lo, hi, _)| hi - lo + 1),
                Part::Net if !text.contains('/') => {
                    address_span(text).map_or(1, |(lo, hi, bits)| cidr_count(lo, hi, bits))
                }
                Part::Port => port_span(text).map_or(1, |(lo, hi)| u128::from(hi - lo) + 1),
                _ => 1,
            };
            count = count.saturating_mul(n);
        }
        count
    }

    /// The numbers a bitmap set's `range` option spans: addresses for
    /// `bitmap:ip` and `bitmap:ip,mac` (`A-B` or `A/PREFIX`), ports for
    /// `bitmap:port` (`P-Q`).
    pub fn bitmap_range(&self, range: &str) -> Result<(u128, u128), String> {
        let span = match self.parts.first() {
            Some(Part::Port) => port_span(range).map(|(lo, hi)| (u128::from(lo), u128::from(hi))),
            _ => address_span(range)
                .filter(|(_, _, bits)| *bits == 32)
                .map(|(lo, hi, _)| (lo, hi)),
        };
        span.ok_or_else(|| format!("`range {range}` is not a range this set type takes"))
    }

    /// The numbers a bitmap member's element spans (see
    /// [`SetType::bitmap_range`]), when it can be read.
    pub fn bitmap_span(&self, member: &str) -> Option<(u128, u128)> {
        let element = member.split(' ').next().unwrap_or(member);
        let first = element.split(',').next().unwrap_or(element);
        match self.parts.first() {
            Some(Part::Port) => port_span(first).map(|(lo, hi)| (u128::from(lo), u128::from(hi))),
            _ => address_span(first).map(|(lo, hi, _)| (lo, hi)),
        }
    }

    /// Checks one member and returns it as written in `ipset` syntax, with
    /// each part normalised. Options after the element (`timeout 60`,
    /// `nomatch`) are kept as written.
    fn normalize_member(&self, member: &str, family: SetFamily) -> Result<String, String> {
        let member = member.trim_start();
        let (element, options) = member
            .split_once(char::is_whitespace)
            .unwrap_or((member, ""));
        if element.is_empty() {
            return Err("empty member".into());
        }
        let parts: Vec<&str> = element.split(',').collect();
        if parts.len() != self.parts.len() {
            return Err(format!(
                "`{element}` has {} part(s) but {} members have {}",
                parts.len(),
                self.name,
                self.parts.len()
            ));
        }
        let mut out = Vec::with_capacity(parts.len());
        for (kind, text) in self.parts.iter().zip(parts) {
            let norm = match kind {
                Part::Ip => ip_or_range(text, family, false),
                Part::Net => ip_or_range(text, family, true),
                Part::Port => port(text, !self.is_bitmap()),
                Part::Mac => mac(text),
                Part::Mark => mark(text),
                Part::Iface => iface(text),
                Part::Set => set_name(text),
            }
            .map_err(|why| format!("`{text}` in `{element}`: {why}"))?;
            out.push(norm);
        }
        let mut normalized = out.join(",");
        push_options(&mut normalized, options)?;
        Ok(normalized)
    }
}

/// The longest member comment ipset keeps (IPSET_MAX_COMMENT_SIZE).
const MAX_COMMENT: usize = 255;

/// Appends a member's options (`timeout 60 comment "a b"`, split as a
/// shell would), each after a blank, a comment in double quotes, as
/// [`member_words`] reads them back. Only what `ipset restore` and `ipset
/// save` carry unchanged is taken: a comment of 1-255 bytes without `"`
/// (ipset refuses it: `"` opens and closes quotes in `ipset restore`) or
/// control characters (`ipset restore` reads a line at a time), other
/// options without blanks or quotes.
fn push_options(out: &mut String, options: &str) -> Result<(), String> {
    let words =
        shlex::split(options).ok_or("unbalanced quotes or a trailing backslash in the options")?;
    let mut words = words.iter();
    while let Some(w) = words.next() {
        out.push(' ');
        if w == "comment" {
            let c = words.next().ok_or("`comment` needs a value")?;
            check_member_comment(c)?;
            out.push_str("comment \"");
            out.push_str(c);
            out.push('"');
        } else if w.is_empty() || w.chars().any(|c| c.is_whitespace() || "\"'\\".contains(c)) {
            return Err(format!(
                "option `{w}`: only a comment may hold blanks or quotes"
            ));
        } else {
            out.push_str(w);
        }
    }
    Ok(())
}

/// Why ipset could not carry `comment` unchanged, if it cannot.
pub fn check_member_comment(comment: &str) -> Result<(), String> {
    if comment.is_empty() {
        return Err("an empty comment (ipset drops an empty word: give none)".into());
    }
    if comment.len() > MAX_COMMENT {
        return Err(format!(
            "a comment of more than {MAX_COMMENT} bytes (ipset keeps no more)"
        ));
    }
    if comment.contains('"') {
        return Err("a comment with `\"` (ipset refuses it)".into());
    }
    if let Some(c) = comment.chars().find(|c| c.is_control()) {
        return Err(format!(
            "a comment with the control character {c:?} (`ipset restore` reads a line at a \
             time)"
        ));
    }
    Ok(())
}

/// A wished member's words as `ipset` takes them: blanks part words, but
/// not inside double quotes, which go (only a comment is quoted, and a
/// comment cannot hold `"`).
pub fn member_words(member: &str) -> impl Iterator<Item = &str> {
    let mut rest = member;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return None;
        }
        let (word, after) = match rest.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((word, after)) => (word, after),
                None => (quoted, ""),
            },
            None => rest.split_once(' ').unwrap_or((rest, "")),
        };
        rest = after;
        Some(word)
    })
}

/// The most addresses one member of an address set may stand for.
const MAX_EXPANSION: u128 = 65_536;

/// The addresses `ADDR`, `ADDR/PREFIX` or `ADDR-ADDR` spans, as numbers,
/// with the family's width in bits.
fn address_span(text: &str) -> Option<(u128, u128, u32)> {
    let bits = |ip: &IpAddr| if ip.is_ipv4() { 32 } else { 128 };
    if let Some((lo, hi)) = text.split_once('-') {
        let (lo, hi) = (lo.parse::<IpAddr>().ok()?, hi.parse::<IpAddr>().ok()?);
        let (a, b) = (ip_bits(lo), ip_bits(hi));
        return (a <= b && bits(&lo) == bits(&hi)).then_some((a, b, bits(&lo)));
    }
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u32>().ok()?),
        None => {
            let ip = text.parse::<IpAddr>().ok()?;
            (ip, bits(&ip))
        }
    };
    let width = bits(&addr);
    let host = width.checked_sub(prefix)?;
    let size_less_one = 1u128.checked_shl(host).map_or(u128::MAX, |s| s - 1);
    let base = ip_bits(addr) & !size_less_one;
    Some((base, base.saturating_add(size_less_one), width))
}

/// One part of an element as the elements ipset stores for it (see
/// [`SetType::expand_member`]); a part that spans nothing is itself.
fn expand_part(part: Part, text: &str, bitmap: bool) -> Vec<String> {
    let one = || vec![text.to_string()];
    match part {
        Part::Ip if text.contains(['-', '/']) => match address_span(text) {
            Some((lo, hi, bits)) => (lo..=hi).map(|n| address(n, bits)).collect(),
            None => one(),
        },
        Part::Net if text.contains('-') => match address_span(text) {
            Some((lo, hi, bits)) => cidrs(lo, hi, bits)
                .into_iter()
                .map(|(base, prefix)| match prefix == bits {
                    true => address(base, bits),
                    false => format!("{}/{prefix}", address(base, bits)),
                })
                .collect(),
            None => one(),
        },
        Part::Port if text.contains('-') => {
            let proto = text.split_once(':').map(|(p, _)| p);
            match (port_span(text), proto) {
                (Some((lo, hi)), Some(proto)) if !bitmap => {
                    (lo..=hi).map(|p| format!("{proto}:{p}")).collect()
                }
                (Some((lo, hi)), _) => (lo..=hi).map(|p| p.to_string()).collect(),
                (None, _) => one(),
            }
        }
        _ => one(),
    }
}

/// The address `n` of a family `bits` wide, as text.
fn address(n: u128, bits: u32) -> String {
    match bits {
        32 => Ipv4Addr::from(n as u32).to_string(),
        _ => Ipv6Addr::from(n).to_string(),
    }
}

/// The ports `[PROTO:]PORT[-PORT]` spans; an ICMP type is one element.
fn port_span(text: &str) -> Option<(u16, u16)> {
    let ports = match text.split_once(':') {
        Some((proto, _)) if proto.starts_with("icmp") => return Some((0, 0)),
        Some((_, ports)) => ports,
        None => text,
    };
    let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
    let (lo, hi) = (lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?);
    (lo <= hi).then_some((lo, hi))
}

/// How many networks ipset splits the range `lo..=hi` into: the fewest
/// aligned blocks that cover it.
fn cidr_count(lo: u128, hi: u128, bits: u32) -> u128 {
    blocks(lo, hi, bits).count() as u128
}

/// The networks ipset splits the range `lo..=hi` into, as (base, prefix).
fn cidrs(lo: u128, hi: u128, bits: u32) -> Vec<(u128, u32)> {
    blocks(lo, hi, bits).collect()
}

/// The fewest aligned blocks that cover `lo..=hi`, in order, as (base,
/// prefix): each the largest block aligned at where the last ended that
/// ends at or before `hi`.
fn blocks(lo: u128, hi: u128, bits: u32) -> impl Iterator<Item = (u128, u32)> {
    let mut next = Some(lo);
    std::iter::from_fn(move || {
        let lo = next?;
        let mut size_bits = lo.trailing_zeros().min(bits);
        while size_bits > 0 && (1u128 << size_bits.min(127)) - 1 > hi - lo {
            size_bits -= 1;
        }
        let last = lo.saturating_add((1u128 << size_bits.min(127)) - 1);
        next = (last < hi && size_bits < 128).then(|| last + 1);
        Some((lo, bits - size_bits))
    })
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn addr(text: &str, family: SetFamily) -> Result<IpAddr, String> {
    let ip: IpAddr = text.parse().map_err(|_| "not an IP address".to_string())?;
    match (ip, family) {
        (IpAddr::V4(_), SetFamily::Inet) | (IpAddr::V6(_), SetFamily::Inet6) => Ok(ip),
        (IpAddr::V4(_), SetFamily::Inet6) => Err("an IPv4 address in a `family inet6` set".into()),
        (IpAddr::V6(_), SetFamily::Inet) => {
            Err("an IPv6 address in an IPv4 set (add `header: family inet6`)".into())
        }
    }
}

/// An address, `ADDR/PREFIX` or `ADDR-ADDR`. A host prefix is dropped, and a
/// network is reduced to its first address, as the kernel stores it.
fn ip_or_range(text: &str, family: SetFamily, is_net: bool) -> Result<String, String> {
    if let Some((lo, hi)) = text.split_once('-') {
        let (lo, hi) = (addr(lo, family)?, addr(hi, family)?);
        if lo > hi {
            return Err("range runs backwards".into());
        }
        return Ok(format!("{lo}-{hi}"));
    }
    let Some((a, p)) = text.split_once('/') else {
        return Ok(addr(text, family)?.to_string());
    };
    let ip = addr(a, family)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u32 = p
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("prefix must be 1..{max}"))?;
    if prefix == max {
        return Ok(ip.to_string());
    }
    let base = match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & (u32::MAX << (32 - prefix)))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6) & (u128::MAX << (128 - prefix)),
        )),
    };
    // hash:ip stores each address of a CIDR separately; ipset save then
    // prints them one by one. Keep the wish as written for those.
    if is_net {
        Ok(format!("{base}/{prefix}"))
    } else {
        Ok(format!("{ip}/{prefix}"))
    }
}

fn port_number(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("`{text}` is not a port number (0-65535)"))
}

/// `[PROTO:]PORT[-PORT]`. In hash types the protocol defaults to tcp and
/// `ipset save` always prints it.
fn port(text: &str, with_proto: bool) -> Result<String, String> {
    let (proto, ports) = match text.split_once(':') {
        Some((proto, ports)) if with_proto => (proto, ports),
        Some(_) => return Err("bitmap:port members take no protocol".into()),
        None => ("tcp", text),
    };
    let valid_proto = matches!(
        proto,
        "tcp" | "udp" | "sctp" | "udplite" | "icmp" | "icmpv6" | "tcpudp"
    ) || proto.parse::<u8>().is_ok();
    if !valid_proto {
        return Err(format!("unknown protocol `{proto}`"));
    }
    let range = if proto.starts_with("icmp") {
        // ICMP members name a type/code or a type name; ipset checks them.
        ports.to_string()
    } else if let Some((lo, hi)) = ports.split_once('-') {
        let (lo, hi) = (port_number(lo)?, port_number(hi)?);
        if lo > hi {
            return Err("port range runs backwards".into());
        }
        format!("{lo}-{hi}")
    } else {
        port_number(ports)?.to_string()
    };
    Ok(if with_proto {
        format!("{proto}:{range}")
    } else {
        range
    })
}

fn mac(text: &str) -> Result<String, String> {
    let octets: Vec<&str> = text.split(':').collect();
    let ok = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(text.to_ascii_uppercase())
    } else {
        Err("not a MAC address (xx:xx:xx:xx:xx:xx)".into())
    }
}

fn mark(text: &str) -> Result<String, String> {
    let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse::<u32>(),
    };
    value
        .map(|v| format!("0x{v:08x}"))
        .map_err(|_| "not a 32-bit mark".into())
}

/// Interface names follow the kernel's IFNAMSIZ (15 characters, no `/` or
/// blanks); `physdev:` marks a bridge port.
fn iface(text: &str) -> Result<String, String> {
    let name = text.strip_prefix("physdev:").unwrap_or(text);
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ',');
    if ok {
        Ok(text.to_string())
    } else {
        Err("not an interface name (1-15 characters, no `/`)".into())
    }
}

/// Set names are at most 31 characters (IPSET_MAXNAMELEN - 1) without blanks.
///
/// A leading `-` is refused: ipset reads such a word as an option
/// (`-exist`, `-q`, `-s`: in an argument vector and in `ipset restore`
/// lines alike).
///
/// A `"` is refused: `ipset restore` reads it as the start or end of a
/// quoted word, so no line of it can name such a set.
pub fn valid_set_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.len() <= 31
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ',' && c != '"')
}

fn set_name(text: &str) -> Result<String, String> {
    if valid_set_name(text) {
        Ok(text.to_string())
    } else {
        Err("not a set name".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(t: &str, m: &str) -> Result<String, String> {
        SetType::parse(t)
            .unwrap()
            .expand_member(m, SetFamily::Inet)
            .map(|v| v.join(" | "))
    }

    #[test]
    fn knows_every_type() {
        for t in KNOWN_TYPES {
            assert!(SetType::parse(t).is_some(), "{t}");
        }
        assert!(SetType::parse("hash:ipx").is_none());
        assert!(SetType::parse("list:ip").is_none());
    }

    #[test]
    fn swappable_follows_the_kernels_features() {
        let t = |n: &str| SetType::parse(n).unwrap();
        assert!(t("hash:ip").swappable_with("bitmap:ip"));
        assert!(t("hash:ip").swappable_with("hash:ip"));
        assert!(!t("hash:ip").swappable_with("hash:net"));
        assert!(t("hash:net,port,net").swappable_with("hash:ip,port,net"));
        assert!(!t("hash:ip,port").swappable_with("hash:net,port"));
        assert!(!t("hash:ip").swappable_with("nonsense"));
    }

    #[test]
    fn normalizes_like_ipset_save() {
        assert_eq!(
            norm("hash:ip", "192.168.122.193/32").unwrap(),
            "192.168.122.193"
        );
        assert_eq!(norm("hash:net", "10.1.2.3/24").unwrap(), "10.1.2.0/24");
        assert_eq!(
            norm("hash:ip,port", "10.0.0.1,80").unwrap(),
            "10.0.0.1,tcp:80"
        );
        assert_eq!(
            norm("hash:ip,port", "10.0.0.1,udp:53").unwrap(),
            "10.0.0.1,udp:53"
        );
        assert_eq!(norm("bitmap:port", "22").unwrap(), "22");
        assert_eq!(
            norm("hash:mac", "aa:bb:cc:dd:ee:ff").unwrap(),
            "AA:BB:CC:DD:EE:FF"
        );
        assert_eq!(
            norm("hash:net,iface", "10.0.0.0/8,eth0").unwrap(),
            "10.0.0.0/8,eth0"
        );
        assert_eq!(
            norm("hash:ip", "10.0.0.1 timeout 5").unwrap(),
            "10.0.0.1 timeout 5"
        );
        let v6 = SetType::parse("hash:ip").unwrap();
        assert_eq!(
            v6.expand_member("2001:db8:0::1", SetFamily::Inet6).unwrap(),
            ["2001:db8::1"]
        );
    }

    #[test]
    fn plain_addresses_skip_nothing_but_work() {
        let t = SetType::parse("hash:ip").unwrap();
        for m in [
            "0.0.0.0",
            "10.0.0.1",
            "255.255.255.255",
            "010.0.0.1",
            "10.0.0.256",
            "1.2.3",
            "2001:db8::1",
            " 10.0.0.1",
        ] {
            for family in [SetFamily::Inet, SetFamily::Inet6] {
                let slow = t.expand_member_slow(m, family);
                assert_eq!(t.expand_member(m, family), slow, "{m}");
                let mut out: crate::state::Members = ["before"].into_iter().collect();
                let into = t.expand_into(m, family, &mut out);
                let out: Vec<String> = out.iter().skip(1).map(String::from).collect();
                assert_eq!(into.map(|()| out), slow, "{m}");
            }
        }
    }

    #[test]
    fn address_sets_store_networks_address_by_address() {
        assert_eq!(
            norm("hash:ip", "10.0.0.4/30").unwrap(),
            "10.0.0.4 | 10.0.0.5 | 10.0.0.6 | 10.0.0.7"
        );
        assert_eq!(
            norm("hash:ip", "10.0.0.1-10.0.0.2").unwrap(),
            "10.0.0.1 | 10.0.0.2"
        );
        assert!(
            norm("hash:ip", "10.0.0.0/8")
                .unwrap_err()
                .contains("hash:net")
        );
        assert_eq!(norm("hash:net", "10.0.0.4/30").unwrap(), "10.0.0.4/30");
    }

    #[test]
    fn counts_elements_as_the_kernel_stores_them() {
        let count = |t: &str, m: &str| SetType::parse(t).unwrap().element_count(m);
        assert_eq!(count("hash:ip", "10.0.0.1"), 1);
        assert_eq!(count("hash:ip,port", "10.0.0.1,tcp:80-90"), 11);
        assert_eq!(count("hash:ip,port", "10.0.0.0/30,udp:53"), 4);
        assert_eq!(count("hash:ip,port", "10.0.0.1-10.0.0.2,udp:5-6"), 4);
        assert_eq!(count("hash:ip,port", "10.0.0.1,icmp:echo-request"), 1);
        // ipset splits 10.0.0.1-10.0.0.10 into .1, .2/31, .4/30, .8/31, .10.
        assert_eq!(count("hash:net", "10.0.0.1-10.0.0.10"), 5);
        assert_eq!(count("hash:net", "10.0.0.0/8"), 1);
        assert_eq!(count("hash:net", "0.0.0.0-255.255.255.255"), 1);
        assert_eq!(
            count("hash:net", "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            1
        );
        assert_eq!(count("hash:net", "::1-::2"), 2);
        // ipset's own split of 10.1.0.0-10.1.0.2: 10.1.0.0/31 and 10.1.0.2.
        assert_eq!(
            count("hash:ip,port,net", "10.0.0.0/31,tcp:1-2,10.1.0.0-10.1.0.2"),
            8
        );
        assert_eq!(count("hash:net,iface", "10.0.0.0/8,eth-0"), 1);
    }

    #[test]
    fn bitmap_ranges_read_as_numbers() {
        let t = SetType::parse("bitmap:ip").unwrap();
        assert_eq!(
            t.bitmap_range("10.0.0.0/24"),
            Ok((0x0a00_0000, 0x0a00_00ff))
        );
        assert_eq!(
            t.bitmap_range("10.0.0.1-10.0.0.2"),
            Ok((0x0a00_0001, 0x0a00_0002))
        );
        assert!(t.bitmap_range("2001:db8::/64").is_err());
        assert_eq!(
            t.bitmap_span("10.0.1.0/30"),
            Some((0x0a00_0100, 0x0a00_0103))
        );
        let p = SetType::parse("bitmap:port").unwrap();
        assert_eq!(p.bitmap_range("0-1024"), Ok((0, 1024)));
        assert_eq!(p.bitmap_span("10-20"), Some((10, 20)));
        assert_eq!(p.bitmap_span("2000 timeout 5"), Some((2000, 2000)));
    }

    #[test]
    fn rejects_members_of_the_wrong_kind() {
        assert!(norm("hash:ip", "example.com").is_err());
        assert!(norm("hash:ip", "2001:db8::1").is_err());
        assert!(norm("hash:ip,port", "10.0.0.1").is_err());
        assert!(norm("hash:ip,port", "10.0.0.1,99999").is_err());
        assert!(norm("bitmap:port", "tcp:22").is_err());
        assert!(norm("hash:net", "10.0.0.0/33").is_err());
        assert!(norm("hash:mac", "aa:bb").is_err());
        assert!(norm("list:set", "a b c").is_ok()); // options after the element
    }
    /// Every part's ranges stored as ipset stores them (what `ipset save`
    /// printed for these, ipset 7.17): so a set with ranges is in sync.
    #[test]
    fn ranges_in_any_part_expand_as_ipset_stores_them() {
        let expand = |t: &str, m: &str| {
            let mut v = SetType::parse(t)
                .unwrap()
                .expand_member(m, SetFamily::Inet)
                .unwrap();
            v.sort();
            v
        };
        assert_eq!(
            expand("hash:ip,port", "10.0.0.1,tcp:80-82"),
            ["10.0.0.1,tcp:80", "10.0.0.1,tcp:81", "10.0.0.1,tcp:82"]
        );
        assert_eq!(
            expand("hash:ip,port", "10.0.0.0/31,udp:53"),
            ["10.0.0.0,udp:53", "10.0.0.1,udp:53"]
        );
        assert_eq!(
            expand("hash:net", "10.0.0.1-10.0.0.10"),
            [
                "10.0.0.1",
                "10.0.0.10",
                "10.0.0.2/31",
                "10.0.0.4/30",
                "10.0.0.8/31"
            ]
        );
        assert_eq!(expand("bitmap:port", "80-82"), ["80", "81", "82"]);
        assert_eq!(
            expand("hash:net,port", "10.2.0.1-10.2.0.3,tcp:22-23"),
            [
                "10.2.0.1,tcp:22",
                "10.2.0.1,tcp:23",
                "10.2.0.2/31,tcp:22",
                "10.2.0.2/31,tcp:23"
            ]
        );
        assert_eq!(
            expand("hash:net,iface", "10.3.0.0-10.3.0.2,eth0"),
            ["10.3.0.0/31,eth0", "10.3.0.2,eth0"]
        );
        // Options follow every element.
        assert_eq!(
            SetType::parse("hash:ip,port")
                .unwrap()
                .expand_member("10.0.0.1,tcp:1-2 timeout 5", SetFamily::Inet)
                .unwrap(),
            ["10.0.0.1,tcp:1 timeout 5", "10.0.0.1,tcp:2 timeout 5"]
        );
    }

    proptest::proptest! {
        /// Copying a member that is already as ipset prints it gives what
        /// normalising it gives, for addresses and networks spelt every
        /// way (leading zeros and `+`, host bits set, /0 to /33).
        #[test]
        fn a_member_copied_as_it_is_is_its_normal_form(
            octets in proptest::array::uniform4(0u8..=255),
            prefix in proptest::option::of(0u32..=33),
            spelling in 0u8..4,
            kind in proptest::sample::select(vec!["hash:net", "hash:ip", "hash:ip,port"]),
        ) {
            let [a, b, c, d] = octets;
            let address = match spelling {
                0 => format!("{a}.{b}.{c}.{d}"),
                1 => format!("0{a}.{b}.{c}.{d}"),
                2 => format!("{a}.{b}.{c}.0"),
                _ => format!("{a}.{b}.0.0"),
            };
            let member = match (prefix, spelling) {
                (Some(p), 3) => format!("{address}/+{p}"),
                (Some(p), _) => format!("{address}/{p}"),
                (None, _) => address,
            };
            let t = SetType::parse(kind).unwrap();
            let mut out = crate::state::Members::new();
            let copied = t.expand_into(&member, SetFamily::Inet, &mut out).map(|()| out);
            let normal = t.expand_member(&member, SetFamily::Inet);
            match (copied, normal) {
                (Ok(copied), Ok(normal)) => {
                    let copied: Vec<String> = copied.iter().map(String::from).collect();
                    proptest::prop_assert_eq!(copied, normal)
                }
                (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
                (a, b) => proptest::prop_assert!(false, "{member}: {a:?} / {b:?}"),
            }
        }
    }
}
