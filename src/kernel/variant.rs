//! Which iptables variant to drive: nft or legacy, as the host's other
//! programs do.

use crate::kernel::backend::Error;
use crate::kernel::system::System;

/// Which iptables variant to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Whichever variant the host's other programs use.
    Auto,
    /// iptables-nft (the nf_tables kernel API).
    Nft,
    /// iptables-legacy (the x_tables kernel API).
    Legacy,
}

impl System {
    /// Picks the iptables variant. `Auto` follows the heuristics of
    /// Kubernetes' iptables-wrapper and Calico: the variant holding more
    /// rules wins, and legacy is only probed when its modules are already
    /// loaded (`/proc/net/ip_tables_names`), since probing would load them.
    pub fn with_variant(mut self, variant: Variant) -> Result<(System, Vec<String>), Error> {
        let mut warnings = Vec::new();
        let chosen = match variant {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
            Variant::Auto => {
                let count = |s: &System, prog: &str| -> usize {
                    s.exec(prog, &[], None)
                        .map(|o| o.stdout.lines().filter(|l| l.starts_with("-A ")).count())
                        .unwrap_or(0)
                };
                let legacy_loaded = ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
                    .iter()
                    .any(|p| std::fs::read_to_string(p).is_ok_and(|t| !t.trim().is_empty()));
                // Legacy holds nothing and `iptables` is nft: nft it is,
                // without counting (a full `iptables-nft-save` of a
                // 50,000-rule host takes seconds).
                let plain_nft = || self.plain_variant() == "nft";
                let nft = if !legacy_loaded && plain_nft() {
                    1
                } else {
                    count(&self, "iptables-nft-save") + count(&self, "ip6tables-nft-save")
                };
                let legacy = if legacy_loaded {
                    count(&self, "iptables-legacy-save") + count(&self, "ip6tables-legacy-save")
                } else {
                    0
                };
                if nft > 0 && legacy > 0 {
                    warnings.push(format!(
                        "both iptables variants hold rules (nft: {nft}, legacy: {legacy}); \
                         using {}. Pass --backend to choose.",
                        if legacy > nft { "legacy" } else { "nft" }
                    ));
                }
                if legacy > nft {
                    "legacy"
                } else if nft > 0 {
                    "nft"
                } else {
                    // Nothing anywhere: use what `iptables` itself is.
                    ""
                }
            }
        };
        // Keep the plain name when it already is the chosen variant, so
        // that output reads as the spec's `iptables -w ...`.
        let plain_is = self.plain_variant();
        if !chosen.is_empty() && plain_is != chosen {
            self.v4 = format!("iptables-{chosen}");
            self.v6 = format!("ip6tables-{chosen}");
        }
        self.nft = match chosen {
            "" => plain_is != "legacy",
            other => other == "nft",
        };
        Ok((self, warnings))
    }

    /// Which variant plain `iptables` is: `nft`, `legacy`, or `""` when it
    /// cannot be run. Read from where its symlinks lead (Debian's
    /// alternatives end at `xtables-nft-multi` or `xtables-legacy-multi`),
    /// which costs no process; else from `iptables --version`.
    fn plain_variant(&self) -> &'static str {
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("iptables"))
                .find(|p| p.is_file())
        });
        let target = found.and_then(|p| std::fs::canonicalize(p).ok());
        match target.as_ref().and_then(|t| t.file_name()?.to_str()) {
            Some("xtables-nft-multi") => return "nft",
            Some("xtables-legacy-multi") => return "legacy",
            _ => {}
        }
        match self.exec("iptables", &["--version".to_string()], None) {
            Ok(o) if o.stdout.contains("nf_tables") => "nft",
            Ok(_) => "legacy",
            Err(_) => "",
        }
    }
}
