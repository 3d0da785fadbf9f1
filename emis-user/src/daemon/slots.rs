//! Stable counter slots for rules. A rule's counters and its flows live under its slot, and
//! a reload keeps the slot of every rule that still exists, so counters never need copying
//! and a flow keeps its rule. A removed rule's slot is retired, not cleared: nothing counts
//! into it any more, its counts stay in the sum of all counters, and the same rule gets it
//! back if it returns (its Prometheus counter never goes backwards). A retired slot is
//! zeroed and given to another rule only when no never-used slot is left.

use std::collections::BTreeMap;

use emis_common::MAX_RULES;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("the policy has {rules} rules; the counter array holds {MAX_RULES}")]
pub struct SlotError {
    pub rules: usize,
}

/// Which slot each rule slug holds, and which slots removed rules left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    pub assigned: BTreeMap<String, u32>,
    /// Slot -> the slug that last counted into it.
    pub retired: BTreeMap<u32, String>,
}

/// The outcome of assigning slots to a new rule list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub slots: Slots,
    /// The slot of each rule, in the rule list's order.
    pub of_rule: Vec<u32>,
    /// Retired slots given to another rule: zero them before the new program runs.
    pub to_zero: Vec<u32>,
    /// Slots of rules that no longer exist: their flows are deleted after the swap.
    pub removed: Vec<u32>,
}

impl Slots {
    /// Slots for `slugs` (a policy's rules, in order), keeping every slot that can be kept.
    pub fn assign(&self, slugs: &[&str]) -> Result<Assignment, SlotError> {
        if slugs.len() > MAX_RULES as usize {
            return Err(SlotError { rules: slugs.len() });
        }
        let mut next = Slots {
            assigned: BTreeMap::new(),
            retired: self.retired.clone(),
        };
        let mut removed = Vec::new();
        for (slug, &slot) in &self.assigned {
            if slugs.contains(&slug.as_str()) {
                next.assigned.insert(slug.clone(), slot);
            } else {
                next.retired.insert(slot, slug.clone());
                removed.push(slot);
            }
        }
        let mut to_zero = Vec::new();
        let mut of_rule = Vec::with_capacity(slugs.len());
        for &slug in slugs {
            if let Some(&slot) = next.assigned.get(slug) {
                of_rule.push(slot);
                continue;
            }
            let returning = next
                .retired
                .iter()
                .find(|(_, s)| s.as_str() == slug)
                .map(|(&slot, _)| slot);
            let slot = match returning {
                Some(slot) => slot,
                None => match (0..MAX_RULES).find(|s| {
                    !next.retired.contains_key(s) && !next.assigned.values().any(|a| a == s)
                }) {
                    Some(fresh) => fresh,
                    None => {
                        // Every slot has counted for some rule: reuse the lowest retired one.
                        let slot = *next
                            .retired
                            .keys()
                            .next()
                            .ok_or(SlotError { rules: slugs.len() })?;
                        to_zero.push(slot);
                        slot
                    }
                },
            };
            next.retired.remove(&slot);
            next.assigned.insert(slug.to_string(), slot);
            of_rule.push(slot);
        }
        Ok(Assignment {
            slots: next,
            of_rule,
            to_zero,
            removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_rules_keep_their_slot_new_ones_take_unused_slots() {
        let first = Slots::default().assign(&["a", "b", "c"]).unwrap();
        assert_eq!(first.of_rule, [0, 1, 2]);
        let second = first.slots.assign(&["c", "d", "a"]).unwrap();
        assert_eq!(second.of_rule, [2, 3, 0]);
        assert_eq!(second.removed, [1]);
        assert!(second.to_zero.is_empty());
        assert_eq!(second.slots.retired.get(&1).map(String::as_str), Some("b"));
    }

    #[test]
    fn a_returning_rule_gets_its_old_slot_back_without_zeroing() {
        let a = Slots::default().assign(&["a", "b"]).unwrap();
        let without = a.slots.assign(&["a"]).unwrap();
        let back = without.slots.assign(&["a", "b"]).unwrap();
        assert_eq!(back.of_rule, [0, 1]);
        assert!(back.to_zero.is_empty() && back.slots.retired.is_empty());
    }

    #[test]
    fn retired_slots_are_zeroed_only_when_no_unused_slot_is_left() {
        let all: Vec<String> = (0..MAX_RULES).map(|i| format!("r{i}")).collect();
        let slugs: Vec<&str> = all.iter().map(String::as_str).collect();
        let full = Slots::default().assign(&slugs).unwrap();
        let mut fewer = slugs.clone();
        fewer.remove(5);
        let shrunk = full.slots.assign(&fewer).unwrap();
        fewer.push("new");
        let reused = shrunk.slots.assign(&fewer).unwrap();
        assert_eq!(reused.of_rule.last(), Some(&5));
        assert_eq!(reused.to_zero, [5]);
        let mut too_many = slugs.clone();
        too_many.push("one-more");
        assert!(Slots::default().assign(&too_many).is_err());
    }
}
