//! One room for "what is this site's virtual host, and does Apache serve
//! it": the vhost a Let's Encrypt site has when it serves its live
//! certificate (LKC), what proves a reload took (the served serial, or a
//! probe file), and bringing sites whose usable certificate is not served
//! (back) to https with one proven reload. `deploy`, `renew`, `sync`,
//! `revoke` and `doctor` all ask here.

use super::ctx::Ctx;
use super::facts;
use crate::apache::{self, Recovered, VhostTls};
use crate::decide::Serve;
use crate::error::Result;
use crate::revocations;
use crate::site::{Site, Tls};
use crate::store::{Material, Place};
use chrono::{DateTime, Utc};

/// The TLS files of a vhost that serves `host`'s live certificate.
pub(super) fn lkc_tls(ctx: &Ctx, host: &str) -> VhostTls {
    let (fullchain, privkey) = ctx.store.live_files(host);
    VhostTls::Lkc { fullchain, privkey }
}

/// The Apache step after certificates changed: every Let's Encrypt site
/// whose vhost does not serve its usable live certificate goes (back) to
/// https — a pending site just provisioned, one that fell back to http
/// while its expired lineage waited, one whose certificate a fleet sync
/// brought — never one owed a revocation without replacement; one reload,
/// proven by the `renewed` hosts' new serials. (reloaded, the error).
pub(super) fn serve_changed(
    ctx: &Ctx,
    rec: Option<&Recovered>,
    sites: &[Site],
    renewed: &[String],
    owed: &revocations::State,
    now: DateTime<Utc>,
) -> (bool, Option<String>) {
    let switched: Vec<&Site> = sites
        .iter()
        .filter(|s| needs_https(ctx, s, now) && !served_owed_no_replace(ctx, owed, &s.hostname))
        .collect();
    if renewed.is_empty() && switched.is_empty() {
        return (false, None);
    }
    let res = match (rec, switched.is_empty()) {
        (_, true) => {
            ctx.progress("reloading Apache for the renewed certificates");
            apache::reload_proven(&ctx.cfg, &renewed_proofs(ctx, sites, renewed))
                .map_err(|said| format!("reloading Apache: {said}"))
        }
        (Some(r), false) => {
            switch_to_https_proving(ctx, r, &switched, renewed_proofs(ctx, sites, renewed))
                .map_err(|e| e.to_string())
        }
        (None, false) => Err("internal: no lock for the Apache change".to_string()),
    };
    match res {
        Ok(()) => (true, None),
        Err(e) => {
            tracing::error!(
                "{e}; the renewed certificates ({}) are on disk but not served yet",
                renewed.join(", ")
            );
            (false, Some(e))
        }
    }
}

/// Is the live certificate of `host` owed a revocation without replacement?
pub(super) fn served_owed_no_replace(ctx: &Ctx, owed: &revocations::State, host: &str) -> bool {
    ctx.store
        .leaf(host, Place::Live)
        .and_then(|c| owed.owed.get(&c.serial).map(|o| o.no_replace && o.host == host))
        .unwrap_or(false)
}

/// Does this Let's Encrypt site have a usable live certificate that its
/// vhost does not serve?
pub(super) fn needs_https(ctx: &Ctx, s: &Site, now: DateTime<Utc>) -> bool {
    if !matches!(s.tls, Tls::LetsEncrypt { .. }) || !ctx.store.has(&s.hostname, Place::Live) {
        return false;
    }
    let usable = match ctx.store.material(&s.hostname, Place::Live) {
        Material::Present(kc) => facts::candidate(&kc, &s.hostname).usable(&s.hostname, now),
        _ => false,
    };
    usable
        && std::fs::read_to_string(ctx.cfg.vhost_file(&s.siteid))
            .map(|t| t != lkc_vhost(ctx, s))
            .unwrap_or(true)
}

pub(super) fn lkc_vhost(ctx: &Ctx, s: &Site) -> String {
    apache::render(&ctx.cfg, &s.siteid, &s.hostname, &lkc_tls(ctx, &s.hostname))
}

/// What shows that Apache serves the renewed certificates: the new serial of
/// each renewed host a site's vhost serves as its LKC (a lineage no vhost
/// serves proves nothing).
pub(super) fn renewed_proofs(ctx: &Ctx, sites: &[Site], renewed: &[String]) -> Vec<apache::Proof> {
    sites
        .iter()
        .filter(|s| {
            matches!(s.tls, Tls::LetsEncrypt { .. })
                && renewed.iter().any(|h| h == s.hostname.as_str())
        })
        .filter(|s| {
            std::fs::read_to_string(ctx.cfg.vhost_file(&s.siteid))
                .map(|t| t == lkc_vhost(ctx, s))
                .unwrap_or(false)
        })
        .filter_map(|s| {
            proof_for(
                ctx,
                &s.siteid,
                &s.hostname,
                &crate::decide::Serve::Lkc { host: s.hostname.to_string() },
            )
        })
        .collect()
}

/// Point these sites' vhosts at their live certificates (their OKC files
/// go), in one transaction; it reloads Apache.
pub(super) fn switch_to_https(ctx: &Ctx, rec: &Recovered, sites: &[&Site]) -> Result<()> {
    switch_to_https_proving(ctx, rec, sites, Vec::new())
}

/// [`switch_to_https`]; the reload must also show `proofs` (and each
/// switched site's certificate).
pub(super) fn switch_to_https_proving(
    ctx: &Ctx,
    rec: &Recovered,
    sites: &[&Site],
    proofs: Vec<apache::Proof>,
) -> Result<()> {
    let mut txn = apache::Transaction::begin(&ctx.cfg, rec)?;
    for p in proofs {
        txn.prove(p);
    }
    for s in sites {
        if let Some(p) = proof_for(
            ctx,
            &s.siteid,
            &s.hostname,
            &crate::decide::Serve::Lkc { host: s.hostname.to_string() },
        ) {
            txn.prove(p);
        }
        txn.write(&ctx.cfg.vhost_file(&s.siteid), lkc_vhost(ctx, s).as_bytes(), 0o644)?;
        let p = ctx.cfg.okc_paths(&s.siteid);
        txn.remove(&p.key)?;
        txn.remove(&p.crt)?;
        txn.remove(&p.cacrt)?;
        ctx.progress(&format!("site {} ({}): switching to https", s.siteid, s.hostname));
    }
    txn.commit(true, &|m| ctx.progress(m), &|_| Ok::<(), crate::error::Error>(()))
}

/// What shows that Apache serves a site as `serve` says once it reloaded:
/// the serial its certificate presents for the host (SNI), or — plain http,
/// or an IP-address host (no SNI) — its vhost answering a probe file from
/// the site's challenge directory.
pub(super) fn proof_for(
    ctx: &Ctx,
    siteid: &str,
    hostname: &str,
    serve: &Serve,
) -> Option<apache::Proof> {
    let probe = || apache::Proof::Probe {
        host: if hostname == "*" {
            "site-admin-probe.invalid".into()
        } else {
            hostname.to_string()
        },
        dir: ctx.cfg.site_wellknown(siteid).join(".well-known/acme-challenge"),
    };
    if hostname.parse::<std::net::IpAddr>().is_ok() {
        return Some(probe());
    }
    let serial = match serve {
        Serve::Nothing => return None,
        Serve::Http => return Some(probe()),
        Serve::Lkc { host } => ctx.store.leaf(host, Place::Live)?.serial,
        Serve::Okc => {
            crate::certs::parse_first_cert(&std::fs::read(ctx.cfg.okc_paths(siteid).crt).ok()?)
                .ok()?
                .serial
        }
    };
    Some(apache::Proof::Serial { host: hostname.to_string(), serial })
}
