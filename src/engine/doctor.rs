//! `site-admin doctor [--repair]`: check every invariant of docs/design.md across
//! the tree and report each violation with the host or site at fault. A
//! violation seen without the lock is checked again under it (after any
//! command that holds it is done), so a change in progress is not reported.

use super::ctx::Ctx;
use super::facts;
use crate::apache::Recovered;
use crate::error::{Error, ExitKind, Result};
use crate::site::{Site, Tls};
use crate::store::{Material, Place};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// One violation.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Finding {
    pub what: String,
    pub problem: String,
    pub repaired: bool,
    /// The invariant of docs/design.md it breaks.
    pub invariant: u8,
}

/// What `doctor --json` prints.
#[derive(Debug, serde::Serialize)]
struct DoctorReport<'a> {
    /// Every finding is repaired (or there is none).
    ok: bool,
    findings: &'a [Finding],
}

fn mode_of(p: &Path) -> Option<u32> {
    std::fs::symlink_metadata(p).ok().map(|m| m.permissions().mode() & 0o7777)
}

/// The findings of one check, each under the invariant it breaks.
struct Checker<'a> {
    ctx: &'a Ctx,
    /// `--repair`: the Apache state recovered under the lock.
    repair_with: Option<&'a Recovered>,
    out: Vec<Finding>,
}

impl Checker<'_> {
    fn repair(&self) -> bool {
        self.repair_with.is_some()
    }

    fn add(&mut self, invariant: u8, what: String, problem: String, repaired: bool) {
        self.out.push(Finding { what, problem, repaired, invariant })
    }

    /// Set `p`'s mode to `mode` when repairing; whether it was.
    fn chmod(&self, p: &Path, mode: u32) -> bool {
        self.repair() && std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).is_ok()
    }

    /// Invariant 1: live links resolve and keys match (the same for the
    /// stash), and each live lineage is under renewal.
    fn links(&mut self) {
        let ctx = self.ctx;
        let store = &ctx.store;
        for place in [Place::Live, Place::Stashed] {
            for name in store.names_with_links(place) {
                let label = match place {
                    Place::Live => format!("live/{name}"),
                    Place::Stashed => format!("norenewal/{name}"),
                };
                let relink = |c: &Self| {
                    c.repair() && place == Place::Live && relink_newest_matching(ctx, &name)
                };
                match store.material(&name, place) {
                    Material::Present(kc) if kc.key_matches => {}
                    Material::Present(_) => {
                        let fixed = relink(self);
                        self.add(1, label, "privkey.pem does not match cert.pem".into(), fixed);
                    }
                    Material::Broken(why) => {
                        let fixed = relink(self);
                        self.add(1, label, format!("unreadable: {why}"), fixed);
                    }
                    Material::Absent => {}
                }
                if place == Place::Live && !store.renewal_conf_path(&name).exists() {
                    self.add(
                        1,
                        format!("renewal/{name}.conf"),
                        "missing: the lineage is not under renewal".into(),
                        false,
                    );
                }
            }
        }
    }

    /// Invariant 1, the renewal confs: each has its links, and certbot can
    /// parse it (it reads it with ConfigObj and skips a conf it cannot parse).
    fn renewal_confs(&mut self) {
        let ctx = self.ctx;
        let store = &ctx.store;
        for name in store.names_with_conf(Place::Live) {
            if !store.has(&name, Place::Live) && !store.has(&name, Place::Stashed) {
                self.add(
                    1,
                    format!("renewal/{name}.conf"),
                    format!("its live/{name} links are missing, so certbot skips it as broken"),
                    false,
                );
            }
            if let Some(why) = std::fs::read_to_string(store.renewal_conf_path(&name))
                .ok()
                .and_then(|t| crate::renewal_conf::certbot_parse_error(&t))
            {
                self.add(
                    1,
                    format!("renewal/{name}.conf"),
                    format!(
                        "certbot cannot parse it ({}), so it skips this lineage",
                        why.escape_debug()
                    ),
                    false,
                );
            }
        }
    }

    /// Invariant 4: the private directories' modes, and no archived private
    /// key readable by others.
    fn modes(&mut self) {
        for (p, want) in self.ctx.store.private_dirs() {
            if let Some(m) = mode_of(&p) {
                if m != want {
                    let fixed = self.chmod(&p, want);
                    self.add(
                        4,
                        p.display().to_string(),
                        format!("mode {m:o}, should be {want:o}"),
                        fixed,
                    );
                }
            }
        }
        let archive = self.ctx.store.archive_root();
        for e in walkdir::WalkDir::new(archive).into_iter().filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy();
            if n.starts_with("privkey") && e.file_type().is_file() {
                if let Some(m) = mode_of(e.path()).filter(|m| m & 0o077 != 0) {
                    let fixed = self.chmod(e.path(), 0o600);
                    self.add(
                        4,
                        e.path().display().to_string(),
                        format!("private key mode {m:o}, should be 600"),
                        fixed,
                    );
                }
            }
        }
    }

    /// Invariant 2 (and 5): Apache runs, and the IP-address site's TLS vhost
    /// is the port's default (clients of an address send no server name).
    /// Whether Apache answers.
    fn apache_runs(&mut self, sites: &[Site]) -> bool {
        let ctx = self.ctx;
        let apache_up = crate::apache::serving(&ctx.cfg);
        if !sites.is_empty() && !apache_up {
            let fixed = self.repair() && crate::apache::restart(&ctx.cfg).is_ok();
            self.add(
                2,
                "Apache".into(),
                format!(
                    "does not answer on 127.0.0.1:{}, so no site is served",
                    ctx.cfg.apache.http_port
                ),
                fixed,
            );
        }
        if !crate::apache::default_in_line(&ctx.cfg) {
            let fixed = match self.repair_with {
                Some(rec) => {
                    crate::apache::repair_default(&ctx.cfg, rec, &|m| ctx.progress(m)).is_ok()
                }
                None => false,
            };
            self.add(
                2,
                ctx.cfg.default_tls_vhost_file().display().to_string(),
                "the default TLS virtual host is not the IP-address site's, so clients of its address get another certificate".into(),
                fixed,
            );
        }
        apache_up
    }

    /// Invariant 2: Apache serves each site's certificate on disk. A stale
    /// one is mended by a reload; the Let's Encrypt sites whose vhost does not
    /// serve their usable certificate are returned (reported per site below).
    fn served(&mut self, sites: &[Site]) -> Vec<Site> {
        let ctx = self.ctx;
        let store = &ctx.store;
        let now = chrono::Utc::now();
        let mut stale = false;
        let mut to_https = Vec::new();
        for s in sites {
            let file_serial = match s.tls {
                Tls::LetsEncrypt { .. } if !facts::is_pending(store, s) => {
                    store.leaf(&s.hostname, Place::Live).map(|c| c.serial)
                }
                Tls::Own(_) => facts::read_okc(&ctx.cfg, &s.siteid)
                    .and_then(|r| r.ok())
                    .map(|kc| kc.leaf.serial),
                _ => None,
            };
            let Some(want) = file_serial else { continue };
            let vhost = std::fs::read_to_string(ctx.cfg.vhost_file(&s.siteid)).unwrap_or_default();
            if matches!(s.tls, Tls::LetsEncrypt { .. })
                && !vhost.contains(
                    &store.live_dir(&s.hostname).join("fullchain.pem").display().to_string(),
                )
            {
                let usable = store
                    .material(&s.hostname, Place::Live)
                    .keycert()
                    .map(|kc| facts::candidate(kc, &s.hostname).usable(&s.hostname, now))
                    .unwrap_or(false);
                if usable && facts::owed_no_replace(&ctx.cfg, store, &s.hostname) {
                    self.add(
                        2,
                        format!("site {} ({})", s.siteid, s.hostname),
                        format!("its certificate (serial {want}) is owed a revocation without replacement: it stays off https; `site-admin renew` takes it out of service, provisions a new one and revokes it"),
                        false,
                    );
                } else if usable {
                    to_https.push(s.clone());
                }
                continue; // reported below as a vhost that does not serve its certificate
            }
            match crate::apache::served_serial(&ctx.cfg, &s.hostname) {
                Some(got) if got == want => {}
                got => {
                    stale = true;
                    self.add(
                        2,
                        format!("site {} ({})", s.siteid, s.hostname),
                        format!(
                            "Apache serves {} for it, but its certificate on disk has serial {want} (Apache was not reloaded since it changed)",
                            got.map(|g| format!("the certificate with serial {g}")).unwrap_or_else(|| "no certificate".into())
                        ),
                        false,
                    );
                }
            }
        }
        if stale && self.repair() && crate::apache::reload(&ctx.cfg).is_ok() {
            for f in self.out.iter_mut().filter(|f| f.problem.contains("was not reloaded")) {
                f.repaired = true;
            }
        }
        to_https
    }

    /// Invariants 4 and 2 for one deployed site: its stored Site JSON (mode
    /// 0600, no key material), its vhost, and its own certificate files.
    /// `switched`: the sites `--repair` brought back to https.
    fn site(&mut self, s: &Site, switched: &[Site]) {
        let ctx = self.ctx;
        let store = &ctx.store;
        let label = format!("site {} ({})", s.siteid, s.hostname);
        let stored = ctx.cfg.stored_site(&s.siteid);
        if let Some(m) = mode_of(&stored).filter(|m| *m != 0o600) {
            let fixed = self.chmod(&stored, 0o600);
            self.add(
                4,
                label.clone(),
                format!("stored Site JSON mode {m:o}, should be 600"),
                fixed,
            );
        }
        if facts::stored_holds_material(&ctx.cfg, &s.siteid) {
            self.add(
                4,
                label.clone(),
                "the stored Site JSON holds key or certificate material".into(),
                false,
            );
        }
        let vhost = ctx.cfg.vhost_file(&s.siteid);
        let text = std::fs::read_to_string(&vhost).unwrap_or_default();
        if text.is_empty() {
            self.add(2, label, format!("its virtual host {} is missing", vhost.display()), false);
            return;
        }
        match s.tls {
            Tls::LetsEncrypt { .. } if !facts::is_pending(store, s) => {
                let f = store.live_dir(&s.hostname).join("fullchain.pem");
                if !text.contains(&f.display().to_string()) {
                    let fixed = switched.iter().any(|t| t.siteid == s.siteid);
                    self.add(
                        2,
                        label,
                        "its virtual host does not serve its Let's Encrypt certificate (it is on http or its old own certificate)".into(),
                        fixed,
                    );
                }
            }
            Tls::Own(_) => self.own_certificate(s, label),
            _ => {}
        }
    }

    /// Invariant 2 (and 4) for a site with its own certificate: the files are
    /// there, readable, the key matches and is not readable by others.
    fn own_certificate(&mut self, s: &Site, label: String) {
        match facts::read_okc(&self.ctx.cfg, &s.siteid) {
            Some(Ok(kc)) if kc.key_matches => {
                let key = self.ctx.cfg.okc_paths(&s.siteid).key;
                if mode_of(&key).map(|m| m & 0o077 != 0).unwrap_or(false) {
                    let fixed = self.chmod(&key, 0o600);
                    self.add(2, label, "its own key file is readable by others".into(), fixed);
                }
            }
            Some(Ok(_)) => {
                self.add(2, label, "its own key does not match its certificate".into(), false)
            }
            Some(Err(e)) => {
                self.add(2, label, format!("its own certificate is unreadable: {e}"), false)
            }
            None => self.add(2, label, "its own certificate files are missing".into(), false),
        }
    }
}

/// Check everything; with `repair`, mend what can be mended without guessing.
/// One check per invariant, in this order (the findings' order).
pub(crate) fn check(ctx: &Ctx, repair_with: Option<&Recovered>) -> Result<Vec<Finding>> {
    let mut c = Checker { ctx, repair_with, out: Vec::new() };
    c.links();
    c.renewal_confs();
    c.modes();
    let sites = facts::all_stored(&ctx.cfg)?;
    let apache_up = c.apache_runs(&sites);
    let to_https = if apache_up { c.served(&sites) } else { Vec::new() };
    // `--repair`: the sites whose vhost does not serve their usable
    // certificate go (back) to https, all in one Apache change.
    let switched = match (repair_with, to_https.is_empty()) {
        (Some(rec), false) => {
            let refs: Vec<&Site> = to_https.iter().collect();
            super::serving::switch_to_https(ctx, rec, &refs).is_ok()
        }
        _ => false,
    };
    let switched = if switched { to_https } else { Vec::new() };
    for s in &sites {
        c.site(s, &switched);
    }
    for (what, problem, repaired) in fleet_findings(ctx, c.repair()) {
        c.add(8, what, problem, repaired);
    }
    Ok(c.out)
}

/// Invariant 8: in fleet mode, certbot never renews a fleet lineage behind
/// the fleet's back (`autorenew = False`), and the device reached the fleet
/// at its last sync (else: the fleet error, and since when).
fn fleet_findings(ctx: &Ctx, repair: bool) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    if ctx.cfg.fleet.is_none() {
        return out;
    }
    let st = super::fleet::load_state(ctx);
    if let Some(e) = &st.error {
        let since = st
            .since
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        out.push(("fleet".to_string(), format!("the fleet cannot be used since {since}: {e}; this device serves what it has and orders nothing"), false));
    }
    for s in facts::all_stored(&ctx.cfg)
        .unwrap_or_default()
        .iter()
        .filter(|s| matches!(s.tls, Tls::LetsEncrypt { .. }))
    {
        let Some(c) = ctx.store.read_conf(&s.hostname, Place::Live) else { continue };
        if c.get(Some("renewalparams"), "autorenew").as_deref() != Some("False") {
            let fixed = repair && ctx.store.set_autorenew(&s.hostname, false).is_ok();
            out.push((
                format!("renewal/{}.conf", s.hostname),
                "a fleet lineage without autorenew = False: certbot may renew it behind the fleet's back".into(),
                fixed,
            ));
        }
    }
    out
}

/// Point live/<name> at the newest complete version whose key matches.
fn relink_newest_matching(ctx: &Ctx, name: &str) -> bool {
    match ctx.store.newest_matching_version(name) {
        Some(n) => ctx.store.link_version(name, n).is_ok(),
        None => false,
    }
}

/// How long a finding seen under the lock is looked at again before it is
/// reported (Apache's graceful reload settling).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// `doctor [--repair]`.
pub(crate) fn doctor_command(ctx: &Ctx, repair: bool) -> Result<i32> {
    let (locked, did) = if repair {
        let (l, did) = ctx.lock_for_repair()?;
        (Some(l), did)
    } else {
        (None, Vec::new())
    };
    let mut findings: Vec<Finding> = did
        .into_iter()
        .map(|d| Finding { what: "journal".into(), problem: d, repaired: true, invariant: 5 })
        .collect();
    if !repair && crate::journal::damaged(&ctx.cfg) {
        findings.push(Finding {
            what: "journal".into(),
            problem: "the Apache journal of an interrupted change is unreadable, so every locked command stops; `site-admin doctor --repair` moves it aside"
                .into(),
            repaired: false,
            invariant: 5,
        });
    }
    let mut checked = check(ctx, locked.as_ref().map(|l| &l.recovered))?;
    // Without --repair doctor takes no lock, so it may have looked at a
    // change another command is making (files written, Apache not reloaded
    // yet). A failing finding is therefore checked again under the global
    // lock, once the holder is done — for up to RECHECK, while the children
    // of a graceful reload the holder just made still serve the old
    // certificate: only what is still wrong is reported.
    let mut lock_error = None;
    if !repair && checked.iter().any(|f| !f.repaired) {
        match crate::lock::GlobalLock::acquire(
            &ctx.cfg.lock_file,
            &ctx.cfg.letsencrypt_dir,
            ctx.lock_timeout,
            "doctor",
        ) {
            Ok(_held) => {
                let start = std::time::Instant::now();
                loop {
                    checked = check(ctx, None)?;
                    if checked.iter().all(|f| f.repaired) || start.elapsed() >= RECHECK {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
            Err(e) => {
                tracing::warn!(
                    "could not take the global lock to check the findings again ({e}): another command may be half-way through the change they show"
                );
                lock_error = Some(e);
            }
        }
    }
    findings.extend(checked);
    let open = findings.iter().filter(|f| !f.repaired).count();
    if ctx.json {
        let doc = DoctorReport { ok: open == 0, findings: &findings };
        ctx.print_json(&doc)?;
    } else {
        for f in &findings {
            println!(
                "{}: {} (invariant {}){}",
                f.what,
                f.problem,
                f.invariant,
                if f.repaired { " (repaired)" } else { "" }
            );
        }
        if findings.is_empty() {
            println!("doctor: every invariant holds");
        } else {
            println!("doctor: {} problem(s), {} repaired", findings.len(), findings.len() - open);
        }
    }
    Ok(match lock_error.map(|e| Error::from(e).kind()) {
        Some(ExitKind::Lock) => ExitKind::Lock.code(),
        _ if open == 0 => 0,
        _ => 1,
    })
}
