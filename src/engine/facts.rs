//! Gathering the facts the decision core needs from disk: the stored Site
//! JSONs, what is deployed, and the live and stashed LKC of a host.

use crate::certs::KeyCert;
use crate::config::Config;
use crate::decide::{Candidate, Current, Event, Facts, Wish};
use crate::error::{Error, Result};
use crate::site::{AtRest, CarriedPair, OwnCert, Site, SiteWire, Tls};
use crate::store::{Material, Place, Store};
use chrono::{DateTime, Utc};
use std::fs;

/// Read one stored Site JSON.
pub(crate) fn load_stored(cfg: &Config, siteid: &str) -> Result<Option<Site>> {
    let path = cfg.stored_site(siteid);
    match fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map(|s: AtRest| Some(s.into_site()))
            .map_err(|e| Error::failed(format!("stored site {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::failed(format!("reading {}: {e}", path.display()))),
    }
}

/// Does the stored Site JSON of `siteid` hold a key or a certificate (which
/// it must not: docs/design.md, invariant 4)? Read from the file itself, as
/// a stored [`Site`] never holds material.
pub(crate) fn stored_holds_material(cfg: &Config, siteid: &str) -> bool {
    fs::read_to_string(cfg.stored_site(siteid))
        .ok()
        .and_then(|t| serde_json::from_str::<SiteWire>(&t).ok())
        .and_then(|w| w.tls)
        .is_some_and(|t| t.has_material())
}

/// Every stored site, by site id.
pub(crate) fn all_stored(cfg: &Config) -> Result<Vec<Site>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(&cfg.sites_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::failed(format!("reading {}: {e}", cfg.sites_dir.display()))),
    };
    let mut ids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_string)
        })
        .filter(|id| crate::site::is_id(id, 's'))
        .collect();
    ids.sort();
    for id in ids {
        if let Some(s) = load_stored(cfg, &id)? {
            out.push(s);
        }
    }
    Ok(out)
}

/// The decision core's view of a key + certificate, judged against `host`.
pub(crate) fn candidate(kc: &KeyCert, host: &str) -> Candidate {
    Candidate {
        not_before: kc.leaf.not_before,
        not_after: kc.leaf.not_after,
        key_matches: kc.key_matches,
        covers_host: kc.leaf.covers(host),
        not_lkc: None,
    }
}

/// A certificate carried as `letsencrypt: true`: also judged on whether a
/// CA this device trusts issued it and whether OpenSSL would load it.
pub(crate) fn carried_candidate(cfg: &Config, kc: &KeyCert, host: &str) -> Candidate {
    let mut c = candidate(kc, host);
    if c.key_matches {
        c.not_lkc = crate::certs::untrusted_issuer(&kc.chain_pem, cfg.acme_ca_bundle.as_deref())
            .or_else(|| {
                crate::certs::check_loadable(&kc.key_pem, &kc.chain_pem, None)
                    .err()
                    .map(|e| e.to_string())
            });
    }
    c
}

/// A present but unreadable lineage: never usable.
fn broken_candidate() -> Candidate {
    Candidate {
        not_before: DateTime::<Utc>::UNIX_EPOCH,
        not_after: DateTime::<Utc>::UNIX_EPOCH,
        key_matches: false,
        covers_host: false,
        not_lkc: None,
    }
}

/// The (notBefore, notAfter) of every live and stashed certificate, for
/// [`crate::decide::clock_plausible`].
pub(crate) fn device_validity(store: &Store) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut v = Vec::new();
    for place in [Place::Live, Place::Stashed] {
        for name in store.names_with_links(place) {
            if let Some(c) = store.leaf(&name, place) {
                v.push((c.not_before, c.not_after));
            }
        }
    }
    v
}

pub(crate) fn material_candidate(m: &Material, host: &str) -> Option<Candidate> {
    match m {
        Material::Absent => None,
        Material::Broken(_) => Some(broken_candidate()),
        Material::Present(kc) => Some(candidate(kc, host)),
    }
}

/// Why a deployed site's OKC files cannot be used ([`read_okc`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OkcError {
    /// The certificate file could not be read.
    #[error("{}: {}", .path.display(), .source)]
    Read { path: std::path::PathBuf, source: std::io::Error },
    /// The files do not parse as a key and its chain.
    #[error("{0}")]
    Parse(#[from] crate::certs::PemError),
}

/// The OKC files of a deployed site, parsed.
pub(crate) fn read_okc(
    cfg: &Config,
    siteid: &str,
) -> Option<std::result::Result<KeyCert, OkcError>> {
    let p = cfg.okc_paths(siteid);
    let key = fs::read_to_string(&p.key).ok()?;
    let crt = match fs::read_to_string(&p.crt) {
        Ok(c) => c,
        Err(source) => return Some(Err(OkcError::Read { path: p.crt, source })),
    };
    Some(KeyCert::parse(&key, &crt).map_err(OkcError::from))
}

/// What is deployed now for a stored site, judged for `new_host`.
pub(crate) fn current_of(
    cfg: &Config,
    store: &Store,
    stored: Option<&Site>,
    new_host: &str,
) -> Current {
    let Some(s) = stored else { return Current::NotDeployed };
    let host = s.hostname.to_string();
    let okc = || match read_okc(cfg, &s.siteid) {
        Some(Ok(kc)) => Some(candidate(&kc, new_host)),
        Some(Err(_)) => Some(broken_candidate()),
        None => None,
    };
    match s.tls {
        Tls::Http => Current::Http { host },
        Tls::Own(_) => Current::Okc { host, okc: okc().unwrap_or_else(broken_candidate) },
        Tls::LetsEncrypt { .. } => {
            if store.has(&host, Place::Live) {
                Current::Lkc { host }
            } else if let Some(c) = okc() {
                // Pending, still serving an old OKC.
                Current::Okc { host, okc: c }
            } else {
                Current::Http { host }
            }
        }
    }
}

/// Is a Let's Encrypt site pending (no live LKC for its host)?
pub(crate) fn is_pending(store: &Store, s: &Site) -> bool {
    matches!(s.tls, Tls::LetsEncrypt { .. }) && !store.has(&s.hostname, Place::Live)
}

/// Is the live certificate of `host` owed a revocation without replacement
/// (a `revoke --no-replace` the CA has not confirmed, interrupted before the
/// certificate was taken out of service)?
pub(crate) fn owed_no_replace(cfg: &Config, store: &Store, host: &str) -> bool {
    let Some(serial) = store.leaf(host, Place::Live).map(|c| c.serial) else { return false };
    crate::revocations::load(&cfg.state_dir())
        .map(|st| st.owed.get(&serial).map(|o| o.no_replace && o.host == host).unwrap_or(false))
        .unwrap_or(false)
}

/// Is the stashed certificate of `host` owed a revocation?
fn stash_owed(cfg: &Config, store: &Store, host: &str) -> bool {
    let Some(serial) = store.leaf(host, Place::Stashed).map(|c| c.serial) else { return false };
    crate::revocations::load(&cfg.state_dir())
        .map(|st| st.owed.contains_key(&serial))
        .unwrap_or(false)
}

/// Refuse a hostname that another deployed site uses (docs/design.md).
pub(crate) fn check_hostname_free(all: &[Site], site: &Site) -> Result<()> {
    for other in all {
        if other.siteid != site.siteid && other.hostname.eq_ignore_ascii_case(&site.hostname) {
            let what = if site.hostname == "*" {
                "a second \"*\" site".to_string()
            } else {
                format!("hostname {}", site.hostname)
            };
            return Err(Error::invalid(format!(
                "site {}: {what} is already used by deployed site {}",
                site.siteid, other.siteid
            )));
        }
        // Clients of an address send no server name: they get the https
        // port's default vhost, and only one site can be it.
        if other.siteid != site.siteid
            && site.is_ip()
            && other.is_ip()
            && site.tls != Tls::Http
            && other.tls != Tls::Http
        {
            return Err(Error::invalid(format!(
                "site {}: hostname {}: Apache can serve only one IP-address site over https (clients of an address send no server name, so they get the port's default TLS virtual host), and deployed site {} ({}) is it; deploy this one without tls, or undeploy that one first",
                site.siteid, site.hostname, other.siteid, other.hostname
            )));
        }
    }
    Ok(())
}

/// Everything [`crate::decide::decide`] needs for this event.
pub(crate) fn gather(
    cfg: &Config,
    store: &Store,
    site: &Site,
    stored: Option<&Site>,
    event: Event,
    now: DateTime<Utc>,
) -> Facts {
    let h = &site.hostname;
    let wish = match &site.tls {
        Tls::Http => Wish::Http,
        Tls::LetsEncrypt { carried, .. } => Wish::LetsEncrypt {
            carried: carried
                .as_ref()
                .and_then(|CarriedPair { key, fullchain }| KeyCert::parse(key, fullchain).ok())
                .map(|kc| carried_candidate(cfg, &kc, h)),
        },
        Tls::Own(own) => Wish::Okc {
            okc: own
                .as_ref()
                .and_then(|OwnCert { key, crt, .. }| KeyCert::parse(key, crt).ok())
                .map(|kc| candidate(&kc, h))
                .unwrap_or_else(broken_candidate),
        },
    };
    let (live, stash) = if h == "*" {
        (None, None)
    } else {
        (
            material_candidate(&store.material(h, Place::Live), h),
            material_candidate(&store.material(h, Place::Stashed), h),
        )
    };
    // A live certificate owed a revocation without replacement is never
    // served again (docs/design.md, "Revocation"): not usable.
    let live = if owed_no_replace(cfg, store, h) { Some(broken_candidate()) } else { live };
    // Nor is a stashed one whose revocation is owed ever taken back.
    let stash =
        if stash.is_some() && stash_owed(cfg, store, h) { Some(broken_candidate()) } else { stash };
    let clock_plausible = crate::decide::clock_plausible(now, &device_validity(store));
    Facts {
        event,
        hostname: h.to_string(),
        wish,
        current: current_of(cfg, store, stored, h),
        live,
        stash,
        now,
        clock_plausible,
    }
}
