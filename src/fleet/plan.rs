//! What a device does with one host when it meets the fleet's record: the
//! pure rule of `sync` and of a device coming back from isolation. Newest
//! usable wins — newest by issuance (notBefore), not by notAfter: a renewal
//! with a shorter lifetime (a short-lived profile) is still the newer one.
//!
//! Rules (a test each):
//! 1. The fleet has a usable certificate and this device has none, or an
//!    older one (issued earlier): **take** it (it becomes the next
//!    `archive/` version and `live/` switches).
//! 2. This device has a usable certificate and the fleet has none, or an
//!    older one: **push** it (a write that compares the record's revision,
//!    so a peer's newer write wins the race and the next sync takes it).
//! 3. The same certificate: **keep** it. Two certificates issued in the same
//!    second are ordered by notAfter, then serial ([`newer`]), so every
//!    device makes the same choice and the fleet converges.
//! 4. Neither has a usable one: **keep** (renew provisions it, under the lock).
//! 5. ARI is asked once for the fleet ([`take_shared_ari`]): the fleet's ARI
//!    state of a lineage replaces this device's when it is about the
//!    certificate this device serves and it is newer (a later
//!    `Retry-After`), or this device has none for that certificate — so one
//!    device's answer (and the moment it picked in the window) holds for all.

use chrono::{DateTime, Utc};

/// One certificate, as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// Its serial.
    pub serial: String,
    /// When it was issued (notBefore).
    pub issued: DateTime<Utc>,
    /// Its notAfter (breaks a tie on issuance).
    pub not_after: DateTime<Utc>,
    /// Usable for the host now (parses, key matches, covers it, valid now).
    pub usable: bool,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconcile {
    /// Materialize the fleet's certificate here.
    Take,
    /// Publish this device's certificate to the fleet.
    Push,
    /// Nothing.
    Keep,
}

/// Is `a` newer than `b`: issued later; on a tie (two certificates issued
/// in one second) the later notAfter, then the greater serial — one order
/// every device agrees on, so the fleet converges.
pub fn newer(a: &Cert, b: &Cert) -> bool {
    (a.issued, a.not_after, &a.serial) > (b.issued, b.not_after, &b.serial)
}

/// The rule for one host.
pub fn reconcile(local: Option<&Cert>, fleet: Option<&Cert>) -> Reconcile {
    let local = local.filter(|c| c.usable);
    let fleet = fleet.filter(|c| c.usable);
    match (local, fleet) {
        (None, None) => Reconcile::Keep,
        (None, Some(_)) => Reconcile::Take,
        (Some(_), None) => Reconcile::Push,
        (Some(l), Some(f)) if l.serial == f.serial => Reconcile::Keep,
        (Some(l), Some(f)) if newer(f, l) => Reconcile::Take,
        (Some(l), Some(f)) if newer(l, f) => Reconcile::Push,
        _ => Reconcile::Keep,
    }
}

/// Rule 5: does the fleet's ARI state (about `shared_cert_id`, asked again
/// not before `shared_retry`) replace this device's (about
/// `local_cert_id`, `local_retry`) for the certificate it serves
/// (`live_cert_id`)?
pub fn take_shared_ari(
    live_cert_id: Option<&str>,
    local_cert_id: Option<&str>,
    local_retry: Option<DateTime<Utc>>,
    shared_cert_id: Option<&str>,
    shared_retry: Option<DateTime<Utc>>,
) -> bool {
    match (live_cert_id, shared_cert_id) {
        (Some(live), Some(shared)) if live == shared => {
            local_cert_id != Some(live) || shared_retry > local_retry
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn c(serial: &str, day: u32, usable: bool) -> Cert {
        let t = Utc.with_ymd_and_hms(2027, 1, day, 0, 0, 0).unwrap();
        Cert { serial: serial.into(), issued: t, not_after: t + chrono::Duration::days(90), usable }
    }

    #[test]
    fn rule1_the_fleets_newer_or_only_usable_certificate_is_taken() {
        assert_eq!(reconcile(None, Some(&c("f", 10, true))), Reconcile::Take);
        assert_eq!(reconcile(Some(&c("l", 5, true)), Some(&c("f", 10, true))), Reconcile::Take);
        assert_eq!(reconcile(Some(&c("l", 20, false)), Some(&c("f", 10, true))), Reconcile::Take);
    }

    #[test]
    fn rule2_this_devices_newer_or_only_usable_certificate_is_pushed() {
        assert_eq!(reconcile(Some(&c("l", 5, true)), None), Reconcile::Push);
        assert_eq!(reconcile(Some(&c("l", 20, true)), Some(&c("f", 10, true))), Reconcile::Push);
        assert_eq!(reconcile(Some(&c("l", 5, true)), Some(&c("f", 20, false))), Reconcile::Push);
    }

    #[test]
    fn rule3_the_same_certificate_keeps_and_a_tie_is_broken_the_same_way_everywhere() {
        assert_eq!(reconcile(Some(&c("s", 10, true)), Some(&c("s", 10, true))), Reconcile::Keep);
        // Issued in the same second: the greater serial wins, seen from either side.
        assert_eq!(reconcile(Some(&c("a", 10, true)), Some(&c("b", 10, true))), Reconcile::Take);
        assert_eq!(reconcile(Some(&c("b", 10, true)), Some(&c("a", 10, true))), Reconcile::Push);
    }

    #[test]
    fn rule4_nothing_usable_anywhere_is_left_to_renew() {
        assert_eq!(reconcile(None, None), Reconcile::Keep);
        assert_eq!(reconcile(Some(&c("l", 5, false)), Some(&c("f", 6, false))), Reconcile::Keep);
    }

    #[test]
    fn rule5_the_fleets_newer_ari_answer_about_the_served_certificate_is_taken() {
        let t = |d| Some(Utc.with_ymd_and_hms(2027, 1, d, 0, 0, 0).unwrap());
        // About the served certificate, asked later than this device: taken.
        assert!(take_shared_ari(Some("c1"), Some("c1"), t(1), Some("c1"), t(2)));
        // This device has nothing about it yet: taken.
        assert!(take_shared_ari(Some("c1"), Some("c0"), t(5), Some("c1"), t(2)));
        assert!(take_shared_ari(Some("c1"), None, None, Some("c1"), None));
        // Older, or the same: kept.
        assert!(!take_shared_ari(Some("c1"), Some("c1"), t(3), Some("c1"), t(2)));
        assert!(!take_shared_ari(Some("c1"), Some("c1"), t(3), Some("c1"), t(3)));
        // About another certificate (a renewal not synced yet, or an old one): never.
        assert!(!take_shared_ari(Some("c1"), Some("c1"), t(1), Some("c2"), t(9)));
        assert!(!take_shared_ari(None, None, None, Some("c2"), t(9)));
    }
}
