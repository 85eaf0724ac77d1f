//! One test per cell of the decision table (docs/design.md), named row__column, plus its bullet rules.
#![allow(non_snake_case)] // test names are row__column of the decision table (docs/design.md)

use super::*;
use chrono::{Duration, TimeZone};

const H: &str = "blog.example.com";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}
fn good(days: i64) -> Candidate {
    Candidate {
        not_before: now() - Duration::days(30),
        not_after: now() + Duration::days(days),
        key_matches: true,
        covers_host: true,
        not_lkc: None,
    }
}
fn expired() -> Candidate {
    good(-1)
}
fn facts(wish: Wish, current: Current) -> Facts {
    Facts {
        event: Event::Deploy,
        hostname: H.into(),
        wish,
        current,
        live: None,
        stash: None,
        now: now(),
        clock_plausible: true,
    }
}
fn http() -> Current {
    Current::Http { host: H.into() }
}
fn okc_cur() -> Current {
    Current::Okc { host: H.into(), okc: good(100) }
}
fn lkc_cur() -> Current {
    Current::Lkc { host: H.into() }
}
fn le(carried: Option<Candidate>) -> Wish {
    Wish::LetsEncrypt { carried }
}
fn okc_wish() -> Wish {
    Wish::Okc { okc: good(300) }
}
fn lkc() -> Serve {
    Serve::Lkc { host: H.into() }
}
fn host() -> String {
    H.into()
}
fn run(f: Facts) -> Plan {
    decide(&f).unwrap()
}

// ---- row: no tls ----

#[test]
fn no_tls__not_deployed() {
    let p = run(facts(Wish::Http, Current::NotDeployed));
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.serve, Serve::Http);
}

#[test]
fn no_tls__deployed_http() {
    let p = run(facts(Wish::Http, http()));
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.serve, Serve::Http);
}

#[test]
fn no_tls__deployed_okc() {
    let p = run(facts(Wish::Http, okc_cur()));
    assert_eq!(p.actions, vec![Action::RemoveOkc]);
    assert_eq!(p.serve, Serve::Http);
}

#[test]
fn no_tls__deployed_lkc() {
    let mut f = facts(Wish::Http, lkc_cur());
    f.live = Some(good(60));
    let p = run(f);
    assert_eq!(p.actions, vec![Action::StashLive { host: host() }]);
    assert_eq!(p.serve, Serve::Http);
}

// ---- row: letsencrypt, no usable LKC ----

#[test]
fn le_no_lkc__not_deployed__usable_stash_is_unstashed() {
    let mut f = facts(le(None), Current::NotDeployed);
    f.stash = Some(good(50));
    let p = run(f);
    assert_eq!(p.actions, vec![Action::Unstash { host: host() }]);
    assert_eq!(p.serve, lkc());
    assert_eq!(p.on_failure, None);
}

#[test]
fn le_no_lkc__not_deployed__provision_fallback_http() {
    let p = run(facts(le(None), Current::NotDeployed));
    assert_eq!(p.actions, vec![Action::Provision { host: host() }]);
    assert_eq!(p.serve, lkc());
    assert_eq!(p.on_failure, Some(Serve::Http));
}

#[test]
fn le_no_lkc__deployed_http__usable_stash_is_unstashed() {
    let mut f = facts(le(None), http());
    f.stash = Some(good(50));
    assert_eq!(run(f).actions, vec![Action::Unstash { host: host() }]);
}

#[test]
fn le_no_lkc__deployed_http__provision_fallback_http() {
    let p = run(facts(le(None), http()));
    assert_eq!(p.actions, vec![Action::Provision { host: host() }]);
    assert_eq!(p.on_failure, Some(Serve::Http));
}

#[test]
fn le_no_lkc__deployed_okc__usable_stash_is_unstashed_and_okc_removed() {
    let mut f = facts(le(None), okc_cur());
    f.stash = Some(good(50));
    let p = run(f);
    assert_eq!(p.actions, vec![Action::Unstash { host: host() }, Action::RemoveOkc]);
    assert_eq!(p.serve, lkc());
}

#[test]
fn le_no_lkc__deployed_okc__provision_fallback_keeps_usable_okc() {
    let p = run(facts(le(None), okc_cur()));
    assert_eq!(p.actions, vec![Action::Provision { host: host() }, Action::RemoveOkc]);
    assert_eq!(p.on_failure, Some(Serve::Okc));
}

#[test]
fn le_no_lkc__deployed_okc__provision_fallback_http_when_okc_expired() {
    let p = run(facts(le(None), Current::Okc { host: host(), okc: expired() }));
    assert_eq!(p.on_failure, Some(Serve::Http));
}

#[test]
fn le_no_lkc__deployed_lkc__keep() {
    let mut f = facts(le(None), lkc_cur());
    f.live = Some(good(60));
    let p = run(f);
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.serve, lkc());
    assert!(p.reason.contains("keep the live certificate"), "{}", p.reason);
}

#[test]
fn le_no_lkc__deployed_lkc__expired_live_is_renewed_now() {
    let mut f = facts(le(None), lkc_cur());
    f.live = Some(expired());
    let p = run(f);
    assert_eq!(p.actions, vec![Action::Provision { host: host() }]);
    assert_eq!(p.on_failure, Some(Serve::Http));
    assert!(p.reason.contains("renew the expired live certificate"), "{}", p.reason);
}

// ---- row: letsencrypt with usable LKC in the Site JSON ----

#[test]
fn le_with_lkc__not_deployed__json_when_no_stash() {
    let p = run(facts(le(Some(good(40))), Current::NotDeployed));
    assert_eq!(p.actions, vec![Action::ImportCarried { host: host() }]);
    assert_eq!(p.serve, lkc());
    assert_eq!(p.on_failure, None);
}

#[test]
fn le_with_lkc__not_deployed__newer_stash_wins() {
    let mut f = facts(le(Some(good(40))), Current::NotDeployed);
    f.stash = Some(good(70));
    assert_eq!(run(f).actions, vec![Action::Unstash { host: host() }]);
}

#[test]
fn le_with_lkc__not_deployed__newer_json_wins_and_deletes_stash() {
    let mut f = facts(le(Some(good(80))), Current::NotDeployed);
    f.stash = Some(good(70));
    assert_eq!(
        run(f).actions,
        vec![Action::DeleteStash { host: host() }, Action::ImportCarried { host: host() }]
    );
}

#[test]
fn le_with_lkc__deployed_http__newest_of_json_and_stash() {
    let mut f = facts(le(Some(good(80))), http());
    f.stash = Some(good(90));
    assert_eq!(run(f.clone()).actions, vec![Action::Unstash { host: host() }]);
    f.stash = None;
    assert_eq!(run(f).actions, vec![Action::ImportCarried { host: host() }]);
}

#[test]
fn le_with_lkc__deployed_okc__json_replaces_okc() {
    let p = run(facts(le(Some(good(80))), okc_cur()));
    assert_eq!(p.actions, vec![Action::ImportCarried { host: host() }, Action::RemoveOkc]);
    assert_eq!(p.serve, lkc());
}

#[test]
fn le_with_lkc__deployed_okc__newer_stash_wins() {
    let mut f = facts(le(Some(good(80))), okc_cur());
    f.stash = Some(good(85));
    assert_eq!(run(f).actions, vec![Action::Unstash { host: host() }, Action::RemoveOkc]);
}

#[test]
fn le_with_lkc__deployed_lkc__older_json_keeps_live() {
    let mut f = facts(le(Some(good(30))), lkc_cur());
    f.live = Some(good(60));
    let p = run(f);
    assert_eq!(p.actions, vec![]);
    assert!(p.reason.contains("over the Site JSON's certificate"), "{}", p.reason);
}

#[test]
fn le_with_lkc__deployed_lkc__newer_json_becomes_next_version() {
    let mut f = facts(le(Some(good(90))), lkc_cur());
    f.live = Some(good(60));
    let p = run(f);
    assert_eq!(p.actions, vec![Action::ImportCarried { host: host() }]);
    assert!(p.reason.contains("next version"), "{}", p.reason);
}

#[test]
fn le_with_lkc__deployed_lkc__equal_dates_keep_live() {
    let mut f = facts(le(Some(good(60))), lkc_cur());
    f.live = Some(good(60));
    assert_eq!(run(f).actions, vec![]);
}

#[test]
fn le_with_lkc__deployed_lkc__expired_live_replaced_by_json() {
    let mut f = facts(le(Some(good(20))), lkc_cur());
    f.live = Some(expired());
    assert_eq!(run(f).actions, vec![Action::ImportCarried { host: host() }]);
}

// ---- row: OKC ----

#[test]
fn okc__not_deployed() {
    let p = run(facts(okc_wish(), Current::NotDeployed));
    assert_eq!(p.actions, vec![Action::WriteOkc]);
    assert_eq!(p.serve, Serve::Okc);
}

#[test]
fn okc__deployed_http() {
    assert_eq!(run(facts(okc_wish(), http())).actions, vec![Action::WriteOkc]);
}

#[test]
fn okc__deployed_okc_is_replaced() {
    let p = run(facts(okc_wish(), okc_cur()));
    assert_eq!(p.actions, vec![Action::WriteOkc]);
    assert!(p.reason.contains("replaces"), "{}", p.reason);
}

#[test]
fn okc__deployed_lkc_is_stashed() {
    let mut f = facts(okc_wish(), lkc_cur());
    f.live = Some(good(60));
    assert_eq!(run(f).actions, vec![Action::StashLive { host: host() }, Action::WriteOkc]);
}

#[test]
fn okc__an_own_certificate_not_valid_yet_warns_as_an_expired_one_does() {
    let mut okc = good(300);
    okc.not_before = now() + Duration::days(3);
    let p = run(facts(Wish::Okc { okc }, Current::NotDeployed));
    assert_eq!(p.actions, vec![Action::WriteOkc]);
    assert!(
        p.warnings.iter().any(|w| w.contains("tls.crt is not valid until 2026-11-25")),
        "{:?}",
        p.warnings
    );
    // Within the clock skew: no warning.
    let mut okc = good(300);
    okc.not_before = now() + Duration::minutes(4);
    assert!(run(facts(Wish::Okc { okc }, Current::NotDeployed)).warnings.is_empty());
    let p = run(facts(Wish::Okc { okc: expired() }, Current::NotDeployed));
    assert!(p.warnings.iter().any(|w| w.contains("expired")), "{:?}", p.warnings);
}

// ---- bullet rules ----

#[test]
fn rule_expired_stash_is_deleted_never_unstashed() {
    let mut f = facts(le(None), http());
    f.stash = Some(expired());
    let p = run(f);
    assert_eq!(
        p.actions,
        vec![Action::DeleteStash { host: host() }, Action::Provision { host: host() }]
    );
}

#[test]
fn rule_mismatched_stash_is_left_alone() {
    let mut f = facts(le(None), http());
    f.stash = Some(Candidate { key_matches: false, ..good(50) });
    let p = run(f);
    assert_eq!(p.actions, vec![Action::Provision { host: host() }]);
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn rule_json_lkc_for_wrong_host_is_ignored_with_warning() {
    let p =
        run(facts(le(Some(Candidate { covers_host: false, ..good(50) })), Current::NotDeployed));
    assert_eq!(p.actions, vec![Action::Provision { host: host() }]);
    assert!(p.warnings[0].contains("does not cover"), "{:?}", p.warnings);
}

#[test]
fn rule_json_lkc_with_mismatched_key_is_ignored_with_warning() {
    let p =
        run(facts(le(Some(Candidate { key_matches: false, ..good(50) })), Current::NotDeployed));
    assert_eq!(p.actions, vec![Action::Provision { host: host() }]);
    assert!(p.warnings[0].contains("does not match"), "{:?}", p.warnings);
}

#[test]
fn rule_expired_json_lkc_is_ignored_with_warning() {
    let mut f = facts(le(Some(expired())), Current::NotDeployed);
    f.stash = Some(good(10));
    let p = run(f);
    assert_eq!(p.actions, vec![Action::Unstash { host: host() }]);
    assert!(p.warnings[0].contains("expired"), "{:?}", p.warnings);
}

#[test]
fn rule_mismatched_okc_is_refused() {
    let r = decide(&facts(
        Wish::Okc { okc: Candidate { key_matches: false, ..good(50) } },
        Current::NotDeployed,
    ));
    assert!(r.is_err());
}

#[test]
fn rule_okc_for_other_host_is_deployed_with_warning() {
    let p = run(facts(
        Wish::Okc { okc: Candidate { covers_host: false, ..good(50) } },
        Current::NotDeployed,
    ));
    assert_eq!(p.serve, Serve::Okc);
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn rule_hostname_change_stashes_old_host_first() {
    let mut f = facts(le(None), Current::Lkc { host: "old.example.com".into() });
    f.stash = Some(good(30));
    let p = run(f);
    assert_eq!(
        p.actions,
        vec![
            Action::StashLive { host: "old.example.com".into() },
            Action::Unstash { host: host() }
        ]
    );
}

#[test]
fn rule_hostname_change_to_http() {
    let p = run(facts(Wish::Http, Current::Lkc { host: "old.example.com".into() }));
    assert_eq!(p.actions, vec![Action::StashLive { host: "old.example.com".into() }]);
    assert_eq!(p.serve, Serve::Http);
}

#[test]
fn rule_unused_live_lineage_is_adopted() {
    let mut f = facts(le(None), Current::NotDeployed);
    f.live = Some(good(30));
    let p = run(f);
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.serve, lkc());
}

#[test]
fn undeploy__lkc_is_stashed() {
    let mut f = facts(le(None), lkc_cur());
    f.event = Event::Undeploy;
    let p = run(f);
    assert_eq!(p.actions, vec![Action::StashLive { host: host() }]);
    assert_eq!(p.serve, Serve::Nothing);
}

#[test]
fn undeploy__okc_is_removed() {
    let mut f = facts(Wish::Http, okc_cur());
    f.event = Event::Undeploy;
    assert_eq!(run(f).actions, vec![Action::RemoveOkc]);
}

#[test]
fn undeploy__http_has_nothing_to_keep() {
    let mut f = facts(Wish::Http, http());
    f.event = Event::Undeploy;
    assert_eq!(run(f).actions, vec![]);
}

// ---- usability: valid already, and a Let's Encrypt certificate at all ----

#[test]
fn rule_a_carried_certificate_not_valid_yet_loses_to_the_live_one() {
    let mut f = facts(
        le(Some(Candidate { not_before: now() + Duration::hours(2), ..good(300) })),
        lkc_cur(),
    );
    f.live = Some(good(30));
    let p = run(f);
    assert_eq!(p.actions, vec![]);
    assert!(p.warnings.iter().any(|w| w.contains("not valid until")), "{:?}", p.warnings);
}

#[test]
fn rule_a_few_minutes_of_clock_skew_are_allowed() {
    let f = facts(
        le(Some(Candidate { not_before: now() + Duration::minutes(3), ..good(80) })),
        Current::NotDeployed,
    );
    assert_eq!(run(f).actions, vec![Action::ImportCarried { host: host() }]);
}

#[test]
fn rule_a_carried_certificate_that_is_no_lkc_is_ignored_with_a_warning() {
    let mut f = facts(
        le(Some(Candidate { not_lkc: Some("it is self-signed".into()), ..good(300) })),
        lkc_cur(),
    );
    f.live = Some(good(30));
    let p = run(f);
    assert_eq!(p.actions, vec![]);
    assert!(p.warnings.iter().any(|w| w.contains("self-signed")), "{:?}", p.warnings);
}

#[test]
fn rule_on_an_implausible_clock_an_expired_stash_is_left_alone() {
    let mut f = facts(le(None), Current::NotDeployed);
    f.stash = Some(expired());
    f.clock_plausible = false;
    let p = run(f);
    assert!(!p.actions.contains(&Action::DeleteStash { host: host() }), "{:?}", p.actions);
    assert!(p.warnings.iter().any(|w| w.contains("clock")), "{:?}", p.warnings);
}

#[test]
fn clock_plausibility() {
    let d = |n: i64| now() + Duration::days(n);
    assert!(clock_plausible(now(), &[]));
    // Latest notAfter in 30 days, longest lifetime 90 days.
    let certs = [(d(-60), d(30)), (d(-10), d(20))];
    assert!(clock_plausible(d(100), &certs));
    assert!(clock_plausible(d(120), &certs));
    assert!(!clock_plausible(d(121), &certs));
    assert!(!clock_plausible(d(400), &certs));
    // Lifetimes of seconds: still a day of slack.
    let tiny = [(now() - Duration::seconds(10), now() - Duration::seconds(5))];
    assert!(clock_plausible(now() + Duration::hours(20), &tiny));
    assert!(!clock_plausible(now() + Duration::hours(25), &tiny));
}
