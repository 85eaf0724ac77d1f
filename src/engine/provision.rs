//! Getting certificates from the CA for the engine: the account (reused, or
//! created once per server and stored where certbot keeps it), issuance, and
//! the renewal parameters a lineage's conf records.

use super::ctx::Ctx;
use crate::acme::{AccountKey, AcmeClient, ClientOptions, Issued, OrderOptions};
use crate::error::{Error, Result};
use crate::site::{ProfileWish, Site};
use crate::store::accounts;
use crate::store::RenewalParams;
use std::time::Duration;

/// Overall deadline for one issuance.
pub const ISSUE_DEADLINE: Duration = Duration::from_secs(90);

pub fn options(ctx: &Ctx, server: &str) -> ClientOptions {
    ClientOptions { directory: server.to_string(), ca_bundle: ctx.cfg.acme_ca_bundle.clone(), deadline: ISSUE_DEADLINE, eab: ctx.cfg.acme_eab.clone() }
}

/// A client with a registered account: the stored one for this server, or a
/// new one (registered, then stored in certbot's layout). Returns the account id too.
pub fn client(ctx: &Ctx) -> Result<(AcmeClient, String)> {
    client_for(ctx, &ctx.cfg.acme_server)
}

/// [`client`] for a given server, with its account resolved before any
/// order: a stored account is checked with the CA first, and one the CA has
/// forgotten (a staging reset, a restarted test CA, a cloned device image)
/// or deactivated is recovered — the same key if the CA still knows it
/// (`onlyReturnExisting`), else a new registration — and every renewal conf
/// that named it is repointed, with a warning naming both.
pub fn client_for(ctx: &Ctx, server: &str) -> Result<(AcmeClient, String)> {
    tracing::trace!(server, "connecting to the ACME server");
    let le = &ctx.cfg.letsencrypt_dir;
    if let Some(acct) = accounts::load(le, server)? {
        let c = AcmeClient::connect(options(ctx, server), acct.key.clone(), Some(acct.uri.clone()))?;
        match c.check_account() {
            Ok(()) => return Ok((c, acct.id)),
            Err(e) if e.account_gone() => {
                // Same key, maybe known under another URL?
                let c = AcmeClient::connect(options(ctx, server), acct.key.clone(), None)?;
                if let Some(uri) = c.find_account()? {
                    tracing::warn!("the ACME account {} of {server} was gone; the CA still knows its key as {uri}", acct.uri);
                    accounts::save(le, server, c.key(), &uri, c.terms_of_service())?;
                    return Ok((c, acct.id));
                }
                let (c, id) = register(ctx, server)?;
                let moved = ctx.store.repoint_account(server, &acct.id, &id)?;
                tracing::warn!(
                    "the ACME server {server} no longer knows the account {} ({}): registered a new account {id} ({}) and moved {} renewal conf(s) to it{}",
                    acct.id,
                    acct.uri,
                    c.account_url().unwrap_or_default(),
                    moved.len(),
                    if moved.is_empty() { String::new() } else { format!(" ({})", moved.join(", ")) }
                );
                return Ok((c, id));
            }
            Err(e) => return Err(e.into()),
        }
    }
    register(ctx, server)
}

/// Register a new account with `server` and store it where certbot keeps accounts.
fn register(ctx: &Ctx, server: &str) -> Result<(AcmeClient, String)> {
    let key = AccountKey::generate().map_err(Error::failed)?;
    let c = AcmeClient::connect(options(ctx, server), key, None)?;
    ctx.progress(&format!("registering an ACME account with {server}"));
    let uri = c.ensure_account(ctx.cfg.contact_email.as_deref())?;
    let id = accounts::save(&ctx.cfg.letsencrypt_dir, server, c.key(), &uri, c.terms_of_service())?;
    Ok((c, id))
}

/// The account a new lineage's conf names: the one stored for the
/// configured server, or — an explicit step, which may talk to the CA — one
/// registered now. None when the CA cannot be reached: the conf then names
/// no account, and the renewal that reaches the CA fills it in.
pub fn resolve_account(ctx: &Ctx) -> Option<String> {
    match accounts::load(&ctx.cfg.letsencrypt_dir, &ctx.cfg.acme_server) {
        Ok(Some(a)) => Some(a.id),
        _ => match client(ctx) {
            Ok((_, id)) => Some(id),
            Err(e) => {
                tracing::warn!("no ACME account for {} yet ({e}); the next renew registers one", ctx.cfg.acme_server);
                None
            }
        },
    }
}

/// Renewal parameters for a site's lineage, naming `account`, with the
/// site's profile so that renewals ask for it again. No I/O.
pub fn renewal_params(ctx: &Ctx, site: &Site, account: Option<String>) -> RenewalParams {
    RenewalParams {
        account,
        server: ctx.cfg.acme_server.clone(),
        webroot: ctx.cfg.site_wellknown(&site.siteid),
        key_type: ctx.cfg.key_type,
        profile: site.profile_wish(ctx.cfg.acme_profile.as_deref()),
    }
}

/// The profile an order for `host` names, checked against the CA's
/// directory (`meta.profiles`): one it does not offer is refused when
/// required (the reason says what it offers), else dropped with a warning
/// (the CA's default is used).
pub fn order_profile(client: &AcmeClient, host: &str, wish: Option<&ProfileWish>) -> std::result::Result<Option<String>, String> {
    let Some(w) = wish else { return Ok(None) };
    let offered = client.profiles();
    if offered.contains(&w.name) {
        return Ok(Some(w.name.clone()));
    }
    let offers = if offered.is_empty() { "none".to_string() } else { offered.join(", ") };
    if w.required {
        return Err(format!("{host}: the CA ({}) does not offer the required profile {:?} (it offers: {offers})", client.directory_url(), w.name));
    }
    tracing::warn!("{host}: the CA does not offer the profile {:?} (it offers: {offers}); asking for its default", w.name);
    Ok(None)
}

/// Obtain a certificate for the site, answering HTTP-01 from its webroot,
/// with its profile.
pub fn issue(ctx: &Ctx, client: &AcmeClient, site: &Site) -> Result<Issued> {
    let host = &site.hostname;
    let profile = order_profile(client, host, site.profile_wish(ctx.cfg.acme_profile.as_deref()).as_ref()).map_err(Error::failed)?;
    ctx.progress(&format!(
        "{host}: requesting a certificate from {}{}",
        ctx.cfg.acme_server,
        profile.as_ref().map(|p| format!(" (profile {p})")).unwrap_or_default()
    ));
    let webroot = ctx.cfg.site_wellknown(&site.siteid);
    crate::fsutil::create_dir_all_mode(&webroot, 0o755)?;
    let issued = client.issue_with(host, &webroot, ctx.cfg.key_type, &OrderOptions { profile, replaces: None })?;
    ctx.progress(&format!("{host}: certificate issued"));
    Ok(issued)
}
