//! Revocations, and the parent of every grant sidekey derived (so that revoking a grant
//! revokes its descendants, and a grant signed by sidekey's key is known to be one it made).
//! In memory: children die with the process anyway (their signing key does), and a revoked
//! root grant is short-lived by construction (`grants.max_ttl`).

use std::collections::HashMap;
use std::time::SystemTime;

use crate::Grant;

/// Chains are followed at most this deep.
const MAX_DEPTH: usize = 64;
/// Past this many entries, expired ones are pruned on insert.
const PRUNE_AT: usize = 1024;

#[derive(Default)]
pub(crate) struct Registry {
    /// Revoked grant → until when the revocation matters (its expiry).
    revoked: HashMap<String, SystemTime>,
    /// Child grant derived here → (parent, child's expiry).
    children: HashMap<String, (String, SystemTime)>,
}

impl Registry {
    pub fn record_child(&mut self, child: &str, parent: &str, expires_at: SystemTime) {
        self.prune();
        self.children
            .insert(child.to_string(), (parent.to_string(), expires_at));
    }

    pub fn minted_here(&self, jti: &str) -> bool {
        self.children.contains_key(jti)
    }

    pub fn expiry_of(&self, jti: &str) -> Option<SystemTime> {
        self.children.get(jti).map(|(_, exp)| *exp)
    }

    /// The first revoked grant among `grant` and those it derives from.
    pub fn revoked_in_chain(&self, grant: &Grant) -> Option<String> {
        if self.revoked.is_empty() {
            return None;
        }
        let mut at = Some(grant.jti.as_str());
        let mut next_claimed = grant.parent.as_deref();
        for _ in 0..MAX_DEPTH {
            let jti = at?;
            if self.revoked.contains_key(jti) {
                return Some(jti.to_string());
            }
            // The first hop is the grant's own `parent` claim; further ones are known only
            // for grants derived here.
            at = next_claimed
                .take()
                .or_else(|| self.children.get(jti).map(|(p, _)| p.as_str()));
        }
        None
    }

    /// `jti` derives (at any depth) from `ancestor`.
    pub fn descends_from(&self, jti: &str, ancestor: &str) -> bool {
        let mut at = jti;
        for _ in 0..MAX_DEPTH {
            match self.children.get(at) {
                Some((parent, _)) if parent == ancestor => return true,
                Some((parent, _)) => at = parent,
                None => return false,
            }
        }
        false
    }

    /// Revokes `jti` and its known descendants; returns all of them.
    pub fn revoke(&mut self, jti: &str, until: SystemTime) -> Vec<String> {
        self.prune();
        let mut ended = vec![jti.to_string()];
        let mut i = 0;
        while i < ended.len() && ended.len() < 100_000 {
            let parent = ended[i].clone();
            ended.extend(
                self.children
                    .iter()
                    .filter(|(_, (p, _))| *p == parent)
                    .map(|(c, _)| c.clone()),
            );
            i += 1;
        }
        for j in &ended {
            let exp = self.children.get(j).map_or(until, |(_, e)| *e);
            self.revoked.insert(j.clone(), exp);
        }
        ended
    }

    fn prune(&mut self) {
        if self.revoked.len() + self.children.len() < PRUNE_AT {
            return;
        }
        let now = SystemTime::now();
        self.revoked.retain(|_, exp| *exp > now);
        self.children.retain(|_, (_, exp)| *exp > now);
    }
}
