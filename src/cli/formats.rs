//! Machine-readable output: `pyfw state --format yaml|json` and
//! `pyfw plan --format json`.
//!
//! Both documents are stable: they carry `format` and `version`, fields are
//! only ever added within a version, and a field's meaning never changes.
//! The serializations here are written by hand, not derived, so that renaming
//! a Rust field can never change the output. `docs/formats.md` describes
//! every field; `tests/offline/formats.rs` holds snapshots of both.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct, Serializer};

use crate::plan::{Command, Plan};
use crate::state::canon::Comparison;
use crate::state::nft::TableState;
use crate::state::rule::{Rule, display_args};
use crate::state::{Chain, Ipset, Ruleset, State, Table};

/// The version of both documents. Bump it only for a change that could
/// break a reader: a field removed, renamed or given another meaning.
pub const VERSION: u32 = 1;

/// How `pyfw state` prints the state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFormat {
    /// `iptables-save`/`ipset save` text, under `# iptables`, `# ip6tables`
    /// and `# ipset` headings.
    #[default]
    IptablesSave,
    /// The state document (`docs/formats.md`) as YAML.
    Yaml,
    /// The state document as JSON.
    Json,
}

/// How `pyfw plan` prints the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    /// One command per line; every other line starts with `#`.
    #[default]
    Text,
    /// The plan document (`docs/formats.md`) as JSON.
    Json,
}

/// Renders the state in `format`, ending with a newline.
pub fn render_state(state: &State, format: StateFormat) -> Result<String, crate::cli::Error> {
    render_state_with(state, &[], format)
}

/// [`render_state`] with the owned nftables tables: after the rest under
/// `# nftables` as `nft -s list table` prints them, or as the document's
/// `nftables`.
pub fn render_state_with(
    state: &State,
    tables: &[TableState],
    format: StateFormat,
) -> Result<String, crate::cli::Error> {
    let doc = StateDoc(state, tables);
    match format {
        StateFormat::IptablesSave => {
            let mut out = state.to_string();
            if !tables.is_empty() {
                out.push_str("# nftables (the tables pyfw owns)\n");
                for t in tables {
                    out.push_str(&t.text);
                }
            }
            Ok(out)
        }
        StateFormat::Json => to_json(&doc),
        StateFormat::Yaml => serde_saphyr::to_string_with_options(&doc, yaml_options())
            .map(|mut s| {
                if !s.ends_with('\n') {
                    s.push('\n');
                }
                s
            })
            .map_err(|e| crate::cli::Error::Format {
                format: "YAML",
                reason: e.to_string(),
            }),
    }
}

/// One line per scalar, never folded: rule text stays greppable.
fn yaml_options() -> serde_saphyr::SerializerOptions {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    options
}

fn to_json(value: &impl Serialize) -> Result<String, crate::cli::Error> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| crate::cli::Error::Format {
            format: "JSON",
            reason: e.to_string(),
        })
}

/// The state document:
/// `{format, version, iptables, ip6tables, ipsets, nftables}`.
pub struct StateDoc<'a>(pub &'a State, pub &'a [TableState]);

impl Serialize for StateDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("State", 6)?;
        m.serialize_field("format", "pyfw-state")?;
        m.serialize_field("version", &VERSION)?;
        m.serialize_field("iptables", &RulesetDoc(&self.0.v4))?;
        m.serialize_field("ip6tables", &RulesetDoc(&self.0.v6))?;
        m.serialize_field("ipsets", &IpsetsDoc(&self.0.ipsets))?;
        m.serialize_field("nftables", &NftTablesDoc(self.1))?;
        m.end()
    }
}

/// Owned nftables tables by `FAMILY NAME`, in that order.
struct NftTablesDoc<'a>(&'a [TableState]);

impl Serialize for NftTablesDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut tables: Vec<&TableState> = self.0.iter().collect();
        tables.sort_by_key(|t| (t.family, t.name.clone()));
        let mut m = s.serialize_map(Some(tables.len()))?;
        for t in tables {
            m.serialize_entry(&format!("{} {}", t.family, t.name), &NftTableDoc(t))?;
        }
        m.end()
    }
}

/// `{family, name, text, objects}`.
struct NftTableDoc<'a>(&'a TableState);

impl Serialize for NftTableDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("NftTable", 4)?;
        m.serialize_field("family", self.0.family.word())?;
        m.serialize_field("name", &self.0.name)?;
        m.serialize_field("text", &self.0.text)?;
        m.serialize_field("objects", &self.0.objects)?;
        m.end()
    }
}

/// Tables by name, in name order.
struct RulesetDoc<'a>(&'a Ruleset);

impl Serialize for RulesetDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.tables.len()))?;
        for (name, table) in &self.0.tables {
            m.serialize_entry(name, &TableDoc(table))?;
        }
        m.end()
    }
}

/// Chains by name, in the order `iptables-save` lists them.
struct TableDoc<'a>(&'a Table);

impl Serialize for TableDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.chains.len()))?;
        for (name, chain) in &self.0.chains {
            m.serialize_entry(name, &ChainDoc(chain))?;
        }
        m.end()
    }
}

/// `{policy, rules}`; `policy` is null for user chains.
struct ChainDoc<'a>(&'a Chain);

impl Serialize for ChainDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Chain", 2)?;
        m.serialize_field("policy", &self.0.policy)?;
        m.serialize_field("rules", &RulesDoc(&self.0.rules))?;
        m.end()
    }
}

struct RulesDoc<'a>(&'a [Rule]);

impl Serialize for RulesDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for rule in self.0 {
            seq.serialize_element(&RuleDoc(rule))?;
        }
        seq.end()
    }
}

/// `{text, argv, comment}`: the rule as `iptables-save` prints it after
/// `-A CHAIN`, as arguments, and its first `--comment` (null if none).
struct RuleDoc<'a>(&'a Rule);

impl Serialize for RuleDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Rule", 3)?;
        m.serialize_field("text", &display_args(self.0.args()))?;
        m.serialize_field("argv", self.0.args())?;
        m.serialize_field("comment", &self.0.comment())?;
        m.end()
    }
}

/// Sets by name, in name order.
struct IpsetsDoc<'a>(&'a BTreeMap<String, Ipset>);

impl Serialize for IpsetsDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, set) in self.0 {
            m.serialize_entry(name, &IpsetDoc(set))?;
        }
        m.end()
    }
}

/// `{type, header, members, comments}`.
struct IpsetDoc<'a>(&'a Ipset);

impl Serialize for IpsetDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Ipset", 4)?;
        m.serialize_field("type", &self.0.kind)?;
        m.serialize_field("header", &self.0.options.join(" "))?;
        m.serialize_field("members", &self.0.members)?;
        m.serialize_field("comments", &self.0.comments)?;
        m.end()
    }
}

/// The plan document:
/// `{format, version, wishes, comparison, offline, in_sync, commands}`.
pub struct PlanDoc<'a> {
    pub wishes: &'a Path,
    pub comparison: Comparison,
    /// Planned from saved dumps rather than the kernel.
    pub offline: bool,
    pub commands: Vec<CommandDoc<'a>>,
}

/// One command: `{command, argv, input, reason, target, wish}`.
pub struct CommandDoc<'a> {
    /// The binary that runs it (`iptables`, `iptables-legacy`, `ipset`).
    pub binary: String,
    pub command: &'a Command,
}

impl<'a> PlanDoc<'a> {
    /// The document for `plan`; `binary` names the program each command
    /// runs as, as the text plan shows it.
    pub fn new(
        wishes: &'a Path,
        comparison: Comparison,
        offline: bool,
        plan: &'a Plan,
        binary: impl Fn(&Command) -> String,
    ) -> PlanDoc<'a> {
        let commands = plan
            .commands
            .iter()
            .map(|c| CommandDoc {
                binary: binary(c),
                command: c,
            })
            .collect();
        PlanDoc {
            wishes,
            comparison,
            offline,
            commands,
        }
    }

    /// True when netfilter already matches the wishes.
    pub fn in_sync(&self) -> bool {
        self.commands.is_empty()
    }

    /// The document as pretty JSON, ending with a newline.
    pub fn to_json(&self) -> Result<String, crate::cli::Error> {
        to_json(self)
    }
}

impl Serialize for PlanDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Plan", 7)?;
        m.serialize_field("format", "pyfw-plan")?;
        m.serialize_field("version", &VERSION)?;
        m.serialize_field("wishes", &self.wishes.display().to_string())?;
        let comparison = match self.comparison {
            Comparison::Kernel => "kernel",
            Comparison::Builtin => "builtin",
        };
        m.serialize_field("comparison", comparison)?;
        m.serialize_field("offline", &self.offline)?;
        m.serialize_field("in_sync", &self.in_sync())?;
        m.serialize_field("commands", &self.commands)?;
        m.end()
    }
}

impl Serialize for CommandDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.command;
        // An nft command's script is its input, not an argument.
        let input = crate::plan::nft::script_of(c);
        let args = match input {
            Some(_) => &c.args[..c.args.len() - 1],
            None => &c.args[..],
        };
        let argv: Vec<&str> = std::iter::once(self.binary.as_str())
            .chain(args.iter().map(String::as_str))
            .collect();
        let mut m = s.serialize_struct("Command", 6)?;
        m.serialize_field(
            "command",
            &format!("{} {}", self.binary, display_args(args)),
        )?;
        m.serialize_field("argv", &argv)?;
        m.serialize_field("input", &input)?;
        m.serialize_field("reason", &c.reason)?;
        m.serialize_field("target", &c.target)?;
        m.serialize_field("wish", &c.wish)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{parse_ipset_save, parse_iptables_save};

    fn state() -> State {
        State {
            v4: parse_iptables_save(
                "*filter\n:INPUT DROP [0:0]\n:f2b-sshd - [0:0]\n\
                 -A INPUT -p tcp -m comment --comment \"a b\" -j ACCEPT\nCOMMIT\n",
            )
            .unwrap(),
            ipsets: parse_ipset_save(
                "create s hash:ip family inet\nadd s 10.0.0.1 comment \"x y\"\nadd s 10.0.0.2\n",
            )
            .unwrap(),
            ..State::default()
        }
    }

    #[test]
    fn json_and_yaml_say_the_same() {
        let json: serde_json::Value =
            serde_json::from_str(&render_state(&state(), StateFormat::Json).unwrap()).unwrap();
        let yaml: serde_json::Value =
            serde_saphyr::from_str(&render_state(&state(), StateFormat::Yaml).unwrap()).unwrap();
        assert_eq!(json, yaml);
        let rule = &json["iptables"]["filter"]["INPUT"]["rules"][0];
        assert_eq!(rule["comment"], "a b");
        assert_eq!(rule["argv"][4], "--comment");
        assert_eq!(rule["text"], "-p tcp -m comment --comment 'a b' -j ACCEPT");
        assert_eq!(
            json["iptables"]["filter"]["f2b-sshd"]["policy"],
            serde_json::Value::Null
        );
        assert_eq!(json["ipsets"]["s"]["comments"]["10.0.0.1"], "x y");
        assert_eq!(json["ipsets"]["s"]["header"], "family inet");
    }

    #[test]
    fn the_default_is_iptables_save() {
        assert_eq!(
            render_state(&state(), StateFormat::default()).unwrap(),
            state().to_string()
        );
    }
}
