//! The ipsets' plan: creation at their size, member diffs, and type or
//! option changes built beside the old set and swapped in.

use std::collections::{BTreeMap, HashMap};

use crate::plan::chain::ChainSim;
use crate::plan::command::{Command, Program, RUN_OVER, element, ipset_cmd};
use crate::state::rule::{Rule, TEMP_PREFIX};
use crate::state::{Family, Ipset, Members};
use crate::wishes::IpsetWish;

/// The temporary set a type or option change is built in before the swap.
fn swap_name(name: &str) -> String {
    spare_name(TEMP_PREFIX, name)
}

/// `prefix` + `name`, cut to ipset's 31-character limit.
pub(crate) fn spare_name(prefix: &str, name: &str) -> String {
    let mut tmp = format!("{prefix}{name}");
    tmp.truncate(31);
    tmp
}

/// The `hashsize` to create a big hash set with, when the wish names none:
/// the size the kernel would grow the set to (a power of two, some four
/// members a bucket), so that filling it does not rehash it again and again
/// on the way (a tenth of the time of filling 100,000 members). Sets of up
/// to 4,096 members start at the kernel's own default of 1,024 and get
/// none.
pub(crate) fn hash_size(wish: &IpsetWish, members: usize) -> Option<String> {
    const DEFAULT: usize = 1024;
    let hash = wish.kind.name().starts_with("hash:");
    let stated = wish.header.iter().any(|w| w == "hashsize");
    let size = members.div_ceil(4).next_power_of_two();
    (hash && !stated && size > DEFAULT).then(|| size.to_string())
}

/// `create NAME TYPE HEADER...`, and the `hashsize` of [`hash_size`] when
/// there is one.
pub(crate) fn create_args<'a>(
    name: &'a str,
    wish: &'a IpsetWish,
    size: &'a Option<String>,
) -> Vec<&'a str> {
    let mut create = vec!["create", name, wish.kind.name()];
    create.extend(wish.header.iter().map(String::as_str));
    create.extend(size.iter().flat_map(|size| ["hashsize", size.as_str()]));
    create
}

/// True when every option the wish states is what the set has. Options the
/// wish leaves out (ipset's defaults and its own choices) never count.
fn options_match(wish: &IpsetWish, have: &Ipset) -> bool {
    let mut words = wish.header.iter();
    while let Some(w) = words.next() {
        let valued = !matches!(w.as_str(), "counters" | "comment" | "skbinfo" | "forceadd");
        let ok = if valued {
            let value = words.next().map(String::as_str).unwrap_or("");
            // The kernel rounds a hash size up to a power of two.
            let value = match (w.as_str(), value.parse::<u32>()) {
                ("hashsize", Ok(n)) => n.max(64).next_power_of_two().to_string(),
                _ => value.to_string(),
            };
            have.options
                .windows(2)
                .any(|pair| pair[0] == *w && pair[1] == value)
        } else {
            have.options.contains(w)
        };
        if !ok {
            return false;
        }
    }
    // list:set and bitmap:port have no family.
    have_family(have).is_none_or(|f| f == family_word(wish))
}

/// A set change that must wait until the rules are planned.
pub(crate) enum SetChange {
    None,
    /// The set's type changes to one the kernel cannot swap with; its rules
    /// move to the filled replacement `tmp` while it is rebuilt.
    Retarget {
        tmp: String,
    },
}

fn have_family(have: &Ipset) -> Option<&str> {
    have.options
        .windows(2)
        .find(|p| p[0] == "family")
        .map(|p| p[1].as_str())
}

fn family_word(wish: &IpsetWish) -> &'static str {
    match wish.family {
        crate::state::set_type::SetFamily::Inet => "inet",
        crate::state::set_type::SetFamily::Inet6 => "inet6",
    }
}

/// One wished set: created when missing, replaced when its type or options
/// differ (see [`replace_set`]), else its members brought in line.
pub(crate) fn plan_ipset(
    wish: &IpsetWish,
    have: Option<&Ipset>,
    out: &mut Vec<Command>,
    last: &mut Vec<Command>,
) -> SetChange {
    let name = wish.name.as_str();
    // What a created set is filled with: the wished members, or (when the
    // wish leaves membership alone) the set's own.
    let fill = wish.members.as_ref().or(have.map(|h| &h.members));
    let sized = hash_size(wish, fill.map_or(0, Members::len));
    let Some(have) = have else {
        let create = create_args(name, wish, &sized);
        out.push(ipset_cmd(
            name,
            &create,
            Some(&["destroy", name]),
            format!("ipset {name}: missing"),
        ));
        let none = Members::new();
        let missing = MemberCmds::new(name, name, "missing");
        missing.adds(wish.members.as_ref().unwrap_or(&none).iter(), out);
        return SetChange::None;
    };
    if have.kind != wish.kind.name() || !options_match(wish, have) {
        let keep = fill.unwrap_or(&have.members);
        return replace_set(wish, have, keep, &sized, out, last);
    }
    let Some(wished) = &wish.members else {
        return SetChange::None;
    };
    let (gone, missing) = member_diff(&have.members, wished);
    let cmds = MemberCmds::new(name, name, "member missing");
    cmds.dels(gone.iter().map(|&i| &have.members[i]), out);
    cmds.adds(missing.iter().map(|&i| &wished[i]), out);
    SetChange::None
}

/// A set whose type or options differ: the new one is built beside the old
/// one, filled with `keep`, so that rules referencing the set never see it
/// missing or empty; then swapped in, or (unlike types) retargeted.
fn replace_set(
    wish: &IpsetWish,
    have: &Ipset,
    keep: &Members,
    sized: &Option<String>,
    out: &mut Vec<Command>,
    last: &mut Vec<Command>,
) -> SetChange {
    let name = wish.name.as_str();
    let tmp = swap_name(name);
    let tmp_create = create_args(&tmp, wish, sized);
    let why = format!(
        "ipset {name}: is `{} {}`, wished `{} {}`",
        have.kind,
        have.options.join(" "),
        wish.kind.name(),
        wish.header.join(" ")
    );
    out.push(ipset_cmd(
        name,
        &tmp_create,
        Some(&["destroy", &tmp]),
        why.clone(),
    ));
    let fill = MemberCmds::new(&tmp, name, "fill the replacement");
    fill.adds(keep.iter(), out);
    let same_family = have_family(have).is_none_or(|f| f == family_word(wish));
    if same_family && wish.kind.swappable_with(&have.kind) {
        out.push(ipset_cmd(
            name,
            &["swap", &tmp, name],
            Some(&["swap", &tmp, name]),
            why,
        ));
        last.push(ipset_cmd(
            name,
            &["destroy", &tmp],
            None,
            format!("ipset {name}: drop the old set"),
        ));
        return SetChange::None;
    }
    // The kernel will not swap sets of unlike types: point every rule at
    // the replacement instead, then give it the old name.
    SetChange::Retarget { tmp }
}

/// Which of the kernel's members (`have`, elements only) no wished member
/// names, and which wished members (`wished`, an element and perhaps its
/// options) the kernel lacks: indices, each list in its own order.
fn member_diff(have: &Members, wished: &Members) -> (Vec<usize>, Vec<usize>) {
    ipv4_member_diff(have, wished).unwrap_or_else(|| index_member_diff(have, wished))
}

/// [`member_diff`] for members of any kind, by an index of their elements.
fn index_member_diff(have: &Members, wished: &Members) -> (Vec<usize>, Vec<usize>) {
    // One pass over each list, each member read as few times as can be:
    // with 100,000 members scattered over the heap, reading them is the
    // cost. `first[i]` is the first member with member `i`'s element.
    let mut have_at = ElementIndex::for_members(have);
    let first: Vec<usize> = (have.iter().enumerate())
        .map(|(i, m)| have_at.first(m, i))
        .collect();
    let mut wished_here = vec![false; have.len()];
    let mut missing = Vec::new();
    for (k, m) in wished.iter().enumerate() {
        match have_at.get(element(m)) {
            Some(i) => wished_here[i] = true,
            None => missing.push(k),
        }
    }
    let gone = (first.iter().enumerate())
        .filter(|(_, f)| !wished_here[**f])
        .map(|(i, _)| i)
        .collect();
    (gone, missing)
}

/// From how many members a side [`ipv4_member_diff`] keys the two sides on
/// two threads: below, a thread costs more than it saves.
const SIDE_BY_SIDE: usize = 20_000;

/// The most members a list may have for [`ipv4_member_diff`]: an index
/// takes the low 24 bits of a key.
const WALK_MAX: usize = 1 << 24;

/// An IPv4 element as 40 bits that are equal exactly when the texts are:
/// a plain address (`10.0.0.1`) or a network (`10.0.0.0/24`, its prefix
/// written as Rust writes numbers, 0 to 32), the address's 32 bits and the
/// prefix (33 for none). The standard parser takes plain dotted quads only,
/// without leading zeros, so equal addresses are equal texts.
fn ipv4_key(text: &str) -> Option<u64> {
    let (address, prefix) = match text.split_once('/') {
        None => (text, 33),
        Some((address, p)) => {
            // Digits only, without a leading zero: as Rust writes numbers
            // (without allocating that text for each of 1,000,000 members).
            let canonical =
                p.bytes().all(|b| b.is_ascii_digit()) && !(p.len() > 1 && p.starts_with('0'));
            let prefix = p.parse::<u8>().ok().filter(|n| *n <= 32 && canonical)?;
            (address, prefix)
        }
    };
    let ip = address.parse::<std::net::Ipv4Addr>().ok()?;
    Some(u64::from(u32::from(ip)) << 8 | u64::from(prefix))
}

/// [`member_diff`] for lists of IPv4 addresses and networks only (the
/// commonest big sets: allow-lists, blocklists), `None` for any other:
/// each list's elements as [`ipv4_key`]s beside their index, sorted, then
/// walked side by side. Sorting two arrays of 100,000 words reads memory in
/// order, where a hash table of 100,000 entries misses the cache on nearly
/// every insert and lookup (a 1% change of a 100,000-member set planned in
/// 14 ms that way, 9.5 ms this way); and a 1,000,000-member blocklist takes
/// 8 MB of keys a side, where its hash table took 50.
fn ipv4_member_diff(have: &Members, wished: &Members) -> Option<(Vec<usize>, Vec<usize>)> {
    let keys = |list: &Members, whole: bool| -> Option<Vec<u64>> {
        if list.len() >= WALK_MAX {
            return None;
        }
        let mut keys = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let text = if whole { m } else { element(m) };
            keys.push(ipv4_key(text)? << 24 | i as u64);
        }
        keys.sort_unstable();
        Some(keys)
    };
    // Both sides at once when both are big: the plan of a 1% change of a
    // 100,000-member set is mostly these two parses and sorts.
    let (have_keys, wished_keys) = if have.len().min(wished.len()) >= SIDE_BY_SIDE {
        std::thread::scope(|s| {
            let theirs = s.spawn(|| keys(have, true));
            let ours = keys(wished, false);
            (theirs.join().unwrap_or(None), ours)
        })
    } else {
        (keys(have, true), keys(wished, false))
    };
    let (have_keys, wished_keys) = (have_keys?, wished_keys?);
    let ip = |k: u64| k >> 24;
    let index = |k: u64| (k & (WALK_MAX as u64 - 1)) as usize;
    let (mut gone, mut missing) = (Vec::new(), Vec::new());
    let (mut h, mut w) = (0, 0);
    while h < have_keys.len() || w < wished_keys.len() {
        match (have_keys.get(h), wished_keys.get(w)) {
            (Some(&a), Some(&b)) if ip(a) == ip(b) => {
                // Every member of either list with this element matches.
                let at = ip(a);
                while have_keys.get(h).is_some_and(|&k| ip(k) == at) {
                    h += 1;
                }
                while wished_keys.get(w).is_some_and(|&k| ip(k) == at) {
                    w += 1;
                }
            }
            (Some(&a), Some(&b)) if ip(a) < ip(b) => {
                gone.push(index(a));
                h += 1;
            }
            (Some(&a), None) => {
                gone.push(index(a));
                h += 1;
            }
            (_, Some(&b)) => {
                missing.push(index(b));
                w += 1;
            }
            (None, None) => break,
        }
    }
    gone.sort_unstable();
    missing.sort_unstable();
    Some((gone, missing))
}

/// Where each of a set's elements first appears in its member list.
///
/// A plain IPv4 address (the commonest element) is keyed by its 32 bits:
/// the standard parser takes dotted quads only, without leading zeros, so
/// two such texts are equal exactly when their addresses are, and finding
/// one compares no text (with 100,000 members scattered over the heap,
/// reading each member's text again to compare it was a third of the cost).
/// Other elements are keyed by their text.
struct ElementIndex<'a> {
    pub(crate) v4: HashMap<u32, usize, crate::state::rule::TextHash>,
    pub(crate) text: HashMap<&'a str, usize, crate::state::rule::TextHash>,
}

impl<'a> ElementIndex<'a> {
    /// Room for `members`, in the map their first one goes to (a set's
    /// members are mostly of one shape).
    pub(crate) fn for_members(members: &Members) -> ElementIndex<'a> {
        let mut index = ElementIndex {
            v4: HashMap::default(),
            text: HashMap::default(),
        };
        match members.first().map(str::parse::<std::net::Ipv4Addr>) {
            Some(Ok(_)) => index.v4.reserve(members.len()),
            _ => index.text.reserve(members.len()),
        }
        index
    }

    /// Notes `element` at index `i`; returns the index it first appeared at.
    pub(crate) fn first(&mut self, element: &'a str, i: usize) -> usize {
        match element.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => *self.v4.entry(u32::from(ip)).or_insert(i),
            Err(_) => *self.text.entry(element).or_insert(i),
        }
    }

    pub(crate) fn get(&self, element: &str) -> Option<usize> {
        match element.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => self.v4.get(&u32::from(ip)).copied(),
            Err(_) => self.text.get(element).copied(),
        }
    }
}

/// Commands for the members of one set, one each: what they all share is
/// made once, not per member.
pub(crate) struct MemberCmds<'a> {
    /// The set the commands change.
    pub(crate) set: &'a str,
    /// The wished set they serve (a replacement is filled for its set).
    pub(crate) wish: &'a str,
    pub(crate) reason: String,
    pub(crate) target: String,
}

impl<'a> MemberCmds<'a> {
    pub(crate) fn new(set: &'a str, wish: &'a str, why: &str) -> MemberCmds<'a> {
        MemberCmds {
            set,
            wish,
            reason: format!("ipset {wish}: {why}"),
            target: format!("ipset {wish}"),
        }
    }

    pub(crate) fn command(&self, args: Vec<String>, undo: Vec<String>, reason: String) -> Command {
        Command {
            program: Program::Ipset,
            args,
            undo: Some(undo),
            reason,
            target: self.target.clone(),
            wish: Some(self.wish.to_string()),
            members: Members::default(),
        }
    }

    /// [`MemberCmds::add`] for each of `members`, onto `out`: one run when
    /// there are more than [`RUN_OVER`] (see [`Command::members`]).
    pub(crate) fn adds<'m>(
        &self,
        members: impl ExactSizeIterator<Item = &'m str> + Clone,
        out: &mut Vec<Command>,
    ) {
        if members.len() <= RUN_OVER {
            out.extend(members.map(|m| self.add(m)));
            return;
        }
        let ops = |op: &str| [op, self.set].map(String::from).to_vec();
        let mut run = self.command(ops("add"), ops("del"), self.reason.clone());
        run.members = compact(members);
        out.push(run);
    }

    /// [`MemberCmds::del`] for each of `elements`, onto `out`: one run when
    /// there are more than [`RUN_OVER`].
    pub(crate) fn dels<'m>(
        &self,
        elements: impl ExactSizeIterator<Item = &'m str> + Clone,
        out: &mut Vec<Command>,
    ) {
        if elements.len() <= RUN_OVER {
            out.extend(elements.map(|e| self.del(e)));
            return;
        }
        let ops = |op: &str| [op, self.set].map(String::from).to_vec();
        let why = format!("ipset {}: {} members not wished", self.wish, elements.len());
        let mut run = self.command(ops("del"), ops("add"), why);
        run.members = compact(elements);
        out.push(run);
    }

    /// `add SET MEMBER...`, undone by deleting its element.
    ///
    /// Each string is allocated once: `Vec::from` moves an array's strings
    /// where `to_vec` would copy them (and free the originals), which for
    /// 100,000 members was a third of the allocations here.
    pub(crate) fn add(&self, member: &str) -> Command {
        let args = match member.split_once(' ') {
            None => Vec::from(["add", self.set, member].map(String::from)),
            Some(_) => {
                let mut args = Vec::with_capacity(3);
                args.extend(["add", self.set].map(String::from));
                args.extend(crate::state::set_type::member_words(member).map(String::from));
                args
            }
        };
        let undo = Vec::from(["del", self.set, element(member)].map(String::from));
        self.command(args, undo, self.reason.clone())
    }

    /// `del SET ELEMENT`, undone by adding it back.
    pub(crate) fn del(&self, element: &str) -> Command {
        let args = Vec::from(["del", self.set, element].map(String::from));
        let undo = Vec::from(["add", self.set, element].map(String::from));
        let reason = format!("ipset {}: member {element} not wished", self.wish);
        self.command(args, undo, reason)
    }
}

/// `members`, compactly, sized once.
fn compact<'m>(members: impl ExactSizeIterator<Item = &'m str> + Clone) -> Members {
    let bytes = members.clone().map(str::len).sum();
    let mut out = Members::with_capacity(members.len(), bytes);
    members.for_each(|m| out.push(m));
    out
}

/// Points every rule that names set `from` at set `to` instead: each copy
/// is inserted just above its original before the original goes, so
/// matching never lapses. `chains` holds every chain as the plan leaves it.
pub(crate) fn retarget(
    chains: &mut BTreeMap<(Family, String, String), Vec<Rule>>,
    from: &str,
    to: &str,
) -> Vec<Command> {
    let mut out = Vec::new();
    for ((family, table, chain), rules) in chains.iter_mut() {
        if !rules.iter().any(|r| r.sets().any(|s| s == from)) {
            continue;
        }
        let mut sim = ChainSim::new(*family, table, chain, rules);
        for (id, rule) in rules.iter().enumerate() {
            if !rule.sets().any(|s| s == from) {
                continue;
            }
            let moved = rule.with_set_renamed(from, to);
            let reason = format!("ipset {from}: rules move to {to}");
            let wish = rule.comment().map(String::from);
            let at = sim.pos(id);
            sim.insert(at, moved, wish.as_deref(), &reason);
            sim.delete(id, wish.as_deref(), &reason);
        }
        *rules = sim.slots.iter().map(|s| s.rule.clone()).collect();
        out.extend(sim.out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Plan, plan};
    use crate::state::State;
    use crate::wishes::Wishes;

    /// A wished set `big` of `n` addresses, with `header` lines.
    pub(crate) fn big_set(kind: &str, header: &str, n: usize) -> Wishes {
        let members: String = (0..n)
            .map(|i| format!("      - 10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let text = format!(
            "pyfw_wishes:\n  ipsets:\n    big:\n      type: {kind}\n{header}      \
             members_equal:\n{members}"
        );
        crate::wishes::parse(&text, std::path::Path::new("w.yaml")).unwrap()
    }

    /// The `create` commands of a plan, as text.
    pub(crate) fn creates(plan: &Plan) -> Vec<String> {
        (plan.commands.iter())
            .filter(|c| c.args.first().is_some_and(|a| a == "create"))
            .map(|c| c.args.join(" "))
            .collect()
    }

    /// A kernel holding one `hash:net` set, `name`, with `members`.
    pub(crate) fn hash_net(name: &str, members: &[&str]) -> State {
        let mut have = State::default();
        let set = Ipset {
            kind: "hash:net".into(),
            options: vec!["family".into(), "inet".into()],
            members: members.iter().map(|m| m.to_string()).collect(),
            comments: Default::default(),
        };
        have.ipsets.insert(name.into(), set);
        have
    }

    #[test]
    pub(crate) fn big_hash_sets_are_created_at_their_size() {
        let none = State::default();
        let plan = |w: &Wishes, s: &State| creates(&plan(w, s));
        assert_eq!(
            plan(&big_set("hash:ip", "", 5000), &none),
            ["create big hash:ip hashsize 2048"]
        );
        assert_eq!(
            plan(&big_set("hash:ip", "", 4096), &none),
            ["create big hash:ip"]
        );
        assert_eq!(
            plan(
                &big_set("hash:ip", "      header: hashsize 4096\n", 5000),
                &none
            ),
            ["create big hash:ip hashsize 4096"]
        );
        assert_eq!(
            plan(
                &big_set("bitmap:ip", "      header: range 10.0.0.0/16\n", 5000),
                &none
            ),
            ["create big bitmap:ip range 10.0.0.0/16"]
        );
        // A replacement is filled at its size too.
        let header = "      header: maxelem 131072\n";
        let got = plan(&big_set("hash:ip", header, 100_000), &hash_net("big", &[]));
        assert_eq!(got.len(), 2, "{got:?}");
        for create in got {
            assert!(
                create.ends_with(" hash:ip maxelem 131072 hashsize 32768"),
                "{create}"
            );
        }
    }

    /// A wish that changes a set's type and leaves its membership alone
    /// keeps the members, in the replacement and in the rebuilt set alike.
    #[test]
    pub(crate) fn a_rebuilt_set_keeps_members_the_wish_leaves_alone() {
        let wishes = crate::wishes::parse(
            "pyfw_wishes:\n  ipsets:\n    s:\n      type: hash:ip\n",
            std::path::Path::new("w.yaml"),
        )
        .unwrap();
        let plan = plan(&wishes, &hash_net("s", &["10.0.0.1", "10.0.0.2"]));
        let adds: Vec<String> = (plan.commands.iter())
            .filter(|c| c.args.first().is_some_and(|a| a == "add"))
            .map(|c| c.args.join(" "))
            .collect();
        assert_eq!(
            adds,
            [
                "add _pyfw_temp_s 10.0.0.1",
                "add _pyfw_temp_s 10.0.0.2",
                "add _pyfw_new_s 10.0.0.1",
                "add _pyfw_new_s 10.0.0.2"
            ]
        );
    }

    /// More than a thousand member changes of one kind in one set are one
    /// run, which stands for the same commands, in the same order, as the
    /// members one by one; fewer are commands of their own.
    #[test]
    fn many_member_changes_are_one_run_of_the_same_commands() {
        let none = State::default();
        let made = plan(&big_set("hash:ip", "", 5000), &none);
        assert_eq!(made.commands.len(), 2);
        assert_eq!(made.count(), 5001);
        let run = &made.commands[1];
        assert_eq!((run.args.join(" "), run.count()), ("add big".into(), 5000));
        let each = made.expanded();
        assert_eq!(each.commands.len(), 5001);
        let last = &each.commands[5000];
        assert_eq!(last.args.join(" "), "add big 10.0.19.135");
        assert_eq!(
            last.undo.as_ref().map(|u| u.join(" ")),
            Some("del big 10.0.19.135".into())
        );
        assert_eq!(
            (last.reason.as_str(), last.target.as_str()),
            ("ipset big: missing", "ipset big")
        );
        assert!(each.commands.iter().all(|c| !c.is_run()));
        // Half the members replaced: 2,500 go and 2,500 come, each a run.
        let mut have = hash_net("big", &[]);
        let set = have.ipsets.get_mut("big").unwrap();
        set.kind = "hash:ip".into();
        set.members = (0..5000)
            .map(|i| {
                format!(
                    "10.{}.{}.{}",
                    (i + 2500) >> 16,
                    ((i + 2500) >> 8) & 255,
                    (i + 2500) & 255
                )
            })
            .collect();
        let change = plan(&big_set("hash:ip", "", 5000), &have);
        let ops: Vec<(String, usize)> = (change.commands.iter())
            .map(|c| (c.args.join(" "), c.count()))
            .collect();
        assert_eq!(ops, [("del big".into(), 2500), ("add big".into(), 2500)]);
        let del = change.commands[0].nth(0).unwrap();
        assert_eq!(del.args.join(" "), "del big 10.0.19.136");
        assert_eq!(
            del.undo.map(|u| u.join(" ")),
            Some("add big 10.0.19.136".into())
        );
        // A thousand are commands of their own.
        assert_eq!(
            plan(&big_set("hash:ip", "", 1000), &none).commands.len(),
            1001
        );
    }

    proptest::proptest! {
        /// The sorted walk over IPv4 addresses and the index agree, with
        /// members listed twice and wished members with options.
        #[test]
        fn the_ipv4_walk_agrees_with_the_index(
            have in proptest::collection::vec((0u8..40, 0u8..4), 0..60),
            wished in proptest::collection::vec((0u8..40, 0u8..4, proptest::bool::ANY), 0..60),
        ) {
            // An address, and networks of it: /24, /32 and /0.
            let text = |i: u8, shape: u8| match shape {
                0 => format!("10.0.{i}.1"),
                1 => format!("10.0.{i}.0/24"),
                2 => format!("10.0.{i}.1/32"),
                _ => format!("10.0.{i}.0/0"),
            };
            let have: Members = have.iter().map(|&(i, shape)| text(i, shape)).collect();
            let wished: Members = (wished.iter())
                .map(|&(i, shape, options)| match options {
                    true => format!("{} timeout 5", text(i, shape)),
                    false => text(i, shape),
                })
                .collect();
            let walk = ipv4_member_diff(&have, &wished);
            proptest::prop_assert_eq!(walk, Some(index_member_diff(&have, &wished)));
        }
    }

    /// Lists big enough to be keyed on two threads give what the index
    /// gives.
    #[test]
    fn big_lists_keyed_side_by_side_agree_with_the_index() {
        let n = SIDE_BY_SIDE as u32 + 5_000;
        let addr = |i: u32| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        let have: Members = (0..n).map(addr).collect();
        // A hundred gone, a hundred new, the rest as they were.
        let wished: Members = (100..n + 100).map(addr).collect();
        let walk = ipv4_member_diff(&have, &wished).expect("plain IPv4");
        assert_eq!(walk, index_member_diff(&have, &wished));
        assert_eq!((walk.0.len(), walk.1.len()), (100, 100));
    }

    #[test]
    pub(crate) fn only_plain_ipv4_lists_take_the_walk() {
        let list = |l: &[&str]| l.iter().copied().collect::<Members>();
        let v4 = list(&["10.0.0.2", "10.0.0.1", "10.1.0.0/16"]);
        assert_eq!(
            ipv4_member_diff(&v4, &list(&["10.0.0.1", "10.0.0.3", "10.1.0.0/16"])),
            Some((vec![0], vec![1]))
        );
        let others = [
            "::1",
            "10.0.0.01",
            "10.0.0.1,tcp:80",
            "10.0.0.0/024",
            "10.0.0.0/+24",
            "10.0.0.0/33",
            "10.0.0.0/",
        ];
        for other in others {
            assert_eq!(ipv4_member_diff(&v4, &list(&[other])), None, "{other}");
            assert_eq!(ipv4_member_diff(&list(&[other]), &v4), None, "{other}");
        }
    }

    /// Two elements share an index entry exactly when their texts are
    /// equal, however an address may be spelled.
    #[test]
    pub(crate) fn element_index_keys_equal_texts_only() {
        let elements = [
            "10.0.0.1",
            "10.0.0.01",
            "010.0.0.1",
            "10.0.0.1/32",
            "10.0.0.1,tcp:80",
            "0.0.0.0",
            "0.0.0.00",
            "255.255.255.255",
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "+1.2.3.4",
            "1.2.3.4 ",
            "::ffff:10.0.0.1",
            "10.0.0.1\0",
            "",
        ];
        let owned: Members = elements.iter().copied().collect();
        let mut index = ElementIndex::for_members(&owned);
        for (i, e) in elements.iter().enumerate() {
            assert_eq!(index.first(e, i), i, "{e:?} taken for an earlier element");
        }
        for (i, e) in elements.iter().enumerate() {
            assert_eq!(index.first(e, 99), i, "{e:?}");
            assert_eq!(index.get(e), Some(i), "{e:?}");
        }
        assert_eq!(index.get("10.0.0.2"), None);
        assert_eq!(index.get("10.0.0.001"), None);
    }
}
