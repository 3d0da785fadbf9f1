//! What the enforcer's maps hold, and the one error for a policy that does not fit.
//!
//! Every limit is checked here. The spec loader checks what the text shows (networks,
//! rules, distinct prefixes) so its [`SpecError`](crate::spec::SpecError) can point at the
//! place and carry the [`CapacityError`]; the compiler checks what only compiled data
//! shows (flattened tries, port entries, rules per port).

use emis_common::{MAX_CANDIDATES, MAX_NETWORKS, MAX_PORT_ENTRIES, MAX_PREFIXES, MAX_RULES};

/// How much the enforcer holds. [`Limits::KERNEL`] is the real one; tests shrink it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub networks: usize,
    pub rules: usize,
    /// Prefixes per address trie (per family).
    pub prefixes: usize,
    /// Distinct (protocol, port) entries of the port map.
    pub port_entries: usize,
    /// Rules one (protocol, port) entry can list.
    pub candidates: usize,
}

impl Limits {
    /// The sizes of the kernel maps (`emis_common::MAX_*`).
    pub const KERNEL: Limits = Limits {
        networks: MAX_NETWORKS as usize,
        rules: MAX_RULES as usize,
        prefixes: MAX_PREFIXES as usize,
        port_entries: MAX_PORT_ENTRIES as usize,
        candidates: MAX_CANDIDATES,
    };

    pub fn check_networks(&self, count: usize) -> Result<(), CapacityError> {
        if count > self.networks {
            return Err(CapacityError::Networks {
                count,
                max: self.networks,
            });
        }
        Ok(())
    }

    pub fn check_rules(&self, count: usize) -> Result<(), CapacityError> {
        if count > self.rules {
            return Err(CapacityError::Rules {
                count,
                max: self.rules,
            });
        }
        Ok(())
    }

    /// Distinct prefixes of one family over networks and site roles, before flattening.
    pub fn check_distinct_prefixes(
        &self,
        family: &'static str,
        count: usize,
    ) -> Result<(), CapacityError> {
        if count > self.prefixes {
            return Err(CapacityError::DistinctPrefixes {
                family,
                count,
                max: self.prefixes,
            });
        }
        Ok(())
    }

    /// Entries of one compiled address trie.
    pub fn check_trie(&self, family: &'static str, count: usize) -> Result<(), CapacityError> {
        if count > self.prefixes {
            return Err(CapacityError::FlattenedPrefixes {
                family,
                count,
                max: self.prefixes,
            });
        }
        Ok(())
    }

    pub fn check_port_entries(&self, count: usize) -> Result<(), CapacityError> {
        if count > self.port_entries {
            return Err(CapacityError::PortEntries {
                count,
                max: self.port_entries,
            });
        }
        Ok(())
    }
}

/// A policy larger than the enforcer holds; each says what to shrink.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("{count} networks; the enforcer supports at most {max}")]
    Networks { count: usize, max: usize },
    #[error("{count} rules; the enforcer supports at most {max}")]
    Rules { count: usize, max: usize },
    #[error(
        "{count} distinct {family} prefixes in networks and site roles; the enforcer holds at most {max}"
    )]
    DistinctPrefixes {
        family: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{count} {family} prefixes after flattening; each address trie holds {max}")]
    FlattenedPrefixes {
        family: &'static str,
        count: usize,
        max: usize,
    },
    #[error(
        "{proto}/{port} is listed by more than {max} rules with different sources or \
         destinations ({rules}); merge some of them or split the port across fewer networks"
    )]
    Candidates {
        proto: &'static str,
        port: u16,
        /// The slugs of the rules listing it, in spec order.
        rules: String,
        max: usize,
    },
    #[error(
        "the rules list {count} distinct (protocol, port) pairs; the port map holds {max}. \
         Narrow the widest port ranges"
    )]
    PortEntries { count: usize, max: usize },
    #[error(
        "the rules name {count} distinct sets of hostnames; the enforcer tells at most {max} \
         apart. Give rules that share a destination the same hostnames list"
    )]
    HostnameGroups { count: usize, max: usize },
}

impl CapacityError {
    /// What to change, for the errors the spec loader locates (it shows this as the
    /// error's hint); the compiler's errors say it in their message.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CapacityError::Networks { .. } => Some("merge networks that share a scope"),
            CapacityError::Rules { .. } => Some(
                "merge rules that share protocol, endpoints and direction into one with more ports",
            ),
            CapacityError::DistinctPrefixes { .. } => Some(
                "use fewer or shorter prefixes (an ip-ranges file can be filtered to the services you use)",
            ),
            CapacityError::FlattenedPrefixes { .. }
            | CapacityError::Candidates { .. }
            | CapacityError::PortEntries { .. }
            | CapacityError::HostnameGroups { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts the CLI tests and operators see: unchanged from before the checks met here.
    #[test]
    fn messages() {
        let limits = Limits::KERNEL;
        let e = limits
            .check_networks(MAX_NETWORKS as usize + 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "33 networks; the enforcer supports at most 32"
        );
        let e = limits.check_rules(MAX_RULES as usize + 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "257 rules; the enforcer supports at most 256"
        );
        assert!(limits.check_networks(MAX_NETWORKS as usize).is_ok());
        assert!(limits.check_rules(MAX_RULES as usize).is_ok());
        let e = limits
            .check_distinct_prefixes("IPv4", MAX_PREFIXES as usize + 1)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{} distinct IPv4 prefixes", MAX_PREFIXES + 1)),
            "{e}"
        );
        assert!(e.hint().is_some());
        let e = limits
            .check_trie("IPv6", MAX_PREFIXES as usize + 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} IPv6 prefixes after flattening; each address trie holds {MAX_PREFIXES}",
                MAX_PREFIXES + 1
            )
        );
        assert!(limits.check_port_entries(MAX_PORT_ENTRIES as usize).is_ok());
        let e = limits
            .check_port_entries(MAX_PORT_ENTRIES as usize + 1)
            .unwrap_err();
        assert!(
            e.to_string().ends_with(&format!(
                "the port map holds {MAX_PORT_ENTRIES}. Narrow the widest port ranges"
            )),
            "{e}"
        );
    }
}
