//! `nft list tables`: which nftables tables the host has, for the lock-out
//! lint (Docker's nftables firewall backend keeps its rules in the tables
//! `ip docker-bridges` and `ip6 docker-bridges`).

use crate::kernel::process::Runner;

/// The host's nftables tables as (family, name), from `nft list tables`;
/// empty when `nft` is missing or fails, which is never an error: the lint
/// then knows of no table.
pub fn tables(runner: &Runner) -> Vec<(String, String)> {
    tables_from(runner, "nft")
}

fn tables_from(runner: &Runner, program: &str) -> Vec<(String, String)> {
    let args = ["list", "tables"].map(String::from);
    match runner.exec(program, &args, None) {
        Ok(out) => parse_tables(&out.stdout),
        Err(e) => {
            tracing::debug!("not knowing the nftables tables: {e}");
            Vec::new()
        }
    }
}

/// The `table FAMILY NAME` lines of `nft list tables`.
pub fn parse_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("table"), Some(family), Some(name), None) => {
                    Some((family.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_table_lines_and_nothing_else() {
        let text = "table ip filter\ntable ip docker-bridges\ntable ip6 docker-bridges\n\
                    # Warning: table ip nat is managed by iptables-nft, do not touch!\n\n";
        let pair = |f: &str, n: &str| (f.to_string(), n.to_string());
        assert_eq!(
            parse_tables(text),
            [
                pair("ip", "filter"),
                pair("ip", "docker-bridges"),
                pair("ip6", "docker-bridges")
            ]
        );
    }

    #[test]
    fn a_missing_nft_is_no_table() {
        let missing = tables_from(&Runner::default(), "/nonexistent/pyfw-test/nft");
        assert_eq!(missing, []);
    }
}
