//! Getting certificates from the CA for the engine: the account (reused, or
//! created once per server and stored where certbot keeps it), issuance, and
//! the renewal parameters a lineage's conf records.

use super::ctx::Ctx;
use crate::acme::{AccountKey, AcmeClient, ClientOptions, Issued, OrderOptions};
use crate::error::{Error, Result};
use crate::site::{ProfileWish, Site};
use crate::store::accounts;
use crate::store::RenewalParams;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Overall deadline for one issuance.
pub(super) const ISSUE_DEADLINE: Duration = Duration::from_secs(90);

pub(super) fn options(ctx: &Ctx, server: &str) -> ClientOptions {
    ClientOptions {
        directory: server.to_string(),
        ca_bundle: ctx.cfg.acme_ca_bundle.clone(),
        deadline: ISSUE_DEADLINE,
        eab: ctx.cfg.acme_eab.clone(),
    }
}

/// A client with a registered account: the stored one for this server, or a
/// new one (registered, then stored in certbot's layout). Returns the account id too.
pub(super) fn client(ctx: &Ctx) -> Result<(AcmeClient, String)> {
    client_for(ctx, &ctx.cfg.acme_server)
}

/// [`client`] for a given server. The stored account is not asked for
/// before use (the CA says `accountDoesNotExist` on the request itself):
/// [`Session`] recovers an account the CA has forgotten.
pub(super) fn client_for(ctx: &Ctx, server: &str) -> Result<(AcmeClient, String)> {
    tracing::trace!(server, "connecting to the ACME server");
    let r = match super::ctx::stored_account(ctx, server)? {
        Some(acct) => (ctx.acme_client(server, acct.key.clone(), Some(acct.uri.clone()))?, acct.id),
        None => register(ctx, server)?,
    };
    tracing::debug!(server, "step: account ready (directory read)");
    Ok(r)
}

/// The ACME client of one run for one server, with the account it orders
/// with: one connection for every request, and no request the CA did not
/// ask for. When the CA answers that it does not know the account
/// (`accountDoesNotExist` — a staging reset, a restarted test CA, a cloned
/// device image — or deactivated), on the order or any later request,
/// [`Session::run`] recovers it once — the same key if the CA still knows
/// it (`onlyReturnExisting`), else a new registration, and every renewal
/// conf that named it is repointed, with a warning naming both — and runs
/// the request again. Shared by the renewal workers: one recovery for all.
pub(super) struct Session<'a> {
    ctx: &'a Ctx,
    server: String,
    /// The client, its account id, and how often it was recovered.
    state: Mutex<(Arc<AcmeClient>, String, u32)>,
}

impl<'a> Session<'a> {
    /// Connect to `server` with its stored account (or register one).
    pub(super) fn open(ctx: &'a Ctx, server: &str) -> Result<Session<'a>> {
        let (c, id) = client_for(ctx, server)?;
        Ok(Session { ctx, server: server.to_string(), state: Mutex::new((Arc::new(c), id, 0)) })
    }

    fn current(&self) -> Result<(Arc<AcmeClient>, String, u32)> {
        let s = self.state.lock().map_err(|_| Error::failed("internal: ACME session lock"))?;
        Ok((s.0.clone(), s.1.clone(), s.2))
    }

    /// The client (for what needs no account: the directory's profiles).
    pub(super) fn client(&self) -> Result<Arc<AcmeClient>> {
        Ok(self.current()?.0)
    }

    /// Run `f` with the client and its account id; if the CA says it does
    /// not know the account, recover it and run `f` once more.
    pub(super) fn run<T>(
        &self,
        f: impl Fn(&AcmeClient, &str) -> std::result::Result<T, crate::acme::AcmeError>,
    ) -> Result<T> {
        let (c, id, generation) = self.current()?;
        match f(&c, &id) {
            Err(e) if e.account_gone() => {
                tracing::debug!(
                    "the ACME server {} says: {e}; recovering the account",
                    self.server
                );
                let (c, id) = self.recover(generation)?;
                Ok(f(&c, &id)?)
            }
            r => Ok(r?),
        }
    }

    /// Recover the account once (another worker may have done it already).
    fn recover(&self, generation: u32) -> Result<(Arc<AcmeClient>, String)> {
        let mut st = self.state.lock().map_err(|_| Error::failed("internal: ACME session lock"))?;
        if st.2 != generation {
            return Ok((st.0.clone(), st.1.clone()));
        }
        let (ctx, server) = (self.ctx, self.server.as_str());
        let (old_id, old_uri) = (st.1.clone(), st.0.account_url().unwrap_or_default());
        // Same key, maybe known under another URL?
        let c = st.0.with_account(st.0.key().clone(), None);
        let (c, id) = match c.find_account()? {
            Some(uri) => {
                tracing::warn!("the ACME account {old_uri} of {server} was gone; the CA still knows its key as {uri}");
                accounts::save(
                    &ctx.cfg.letsencrypt_dir,
                    server,
                    c.key(),
                    &uri,
                    c.terms_of_service(),
                )?;
                (c, old_id)
            }
            None if ctx.cfg.fleet.is_some() => {
                // A new account on one device would leave every other device
                // answering HTTP-01 for the old one's thumbprint.
                return Err(Error::failed(format!(
                    "the ACME server {server} no longer knows the fleet's account {old_id} ({old_uri}); in fleet mode one device does not register a new one alone: delete the fleet's account record (etcd key <fleet.prefix>accounts/...) and run `site-admin sync` on one device, then on the others"
                )));
            }
            None => {
                let key = AccountKey::generate().map_err(Error::failed)?;
                let c = st.0.with_account(key, None);
                let id = register_with(ctx, server, &c)?;
                let moved = ctx.store.repoint_account(server, &old_id, &id)?;
                tracing::warn!(
                    "the ACME server {server} no longer knows the account {old_id} ({old_uri}): registered a new account {id} ({}) and moved {} renewal conf(s) to it{}",
                    c.account_url().unwrap_or_default(),
                    moved.len(),
                    if moved.is_empty() { String::new() } else { format!(" ({})", moved.join(", ")) }
                );
                (c, id)
            }
        };
        let c = Arc::new(c);
        *st = (c.clone(), id.clone(), generation + 1);
        Ok((c, id))
    }
}

/// Register a new account with `server` and store it where certbot keeps accounts.
fn register(ctx: &Ctx, server: &str) -> Result<(AcmeClient, String)> {
    let key = AccountKey::generate().map_err(Error::failed)?;
    let c = ctx.acme_client(server, key, None)?;
    let id = register_with(ctx, server, &c)?;
    Ok((c, id))
}

/// Register the client's key as a new account; returns its stored id.
fn register_with(ctx: &Ctx, server: &str, c: &AcmeClient) -> Result<String> {
    ctx.progress(&format!("registering an ACME account with {server}"));
    let uri = c.ensure_account(ctx.cfg.contact_email.as_deref())?;
    Ok(accounts::save(&ctx.cfg.letsencrypt_dir, server, c.key(), &uri, c.terms_of_service())?)
}

/// The account a new lineage's conf names: the one stored for the
/// configured server, or — an explicit step, which may talk to the CA — one
/// registered now. None when the CA cannot be reached: the conf then names
/// no account, and the renewal that reaches the CA fills it in.
pub(super) fn resolve_account(ctx: &Ctx) -> Option<String> {
    match super::ctx::stored_account(ctx, &ctx.cfg.acme_server) {
        Ok(Some(a)) => Some(a.id),
        _ => match client(ctx) {
            Ok((_, id)) => Some(id),
            Err(e) => {
                tracing::warn!(
                    "no ACME account for {} yet ({e}); the next renew registers one",
                    ctx.cfg.acme_server
                );
                None
            }
        },
    }
}

/// Renewal parameters for a site's lineage, naming `account`, with the
/// site's profile so that renewals ask for it again. No I/O.
pub(super) fn renewal_params(ctx: &Ctx, site: &Site, account: Option<String>) -> RenewalParams {
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
pub(super) fn order_profile(
    client: &AcmeClient,
    host: &str,
    wish: Option<&ProfileWish>,
) -> Result<Option<String>> {
    let Some(w) = wish else { return Ok(None) };
    let offered = client.profiles();
    if offered.contains(&w.name) {
        return Ok(Some(w.name.clone()));
    }
    let offers = if offered.is_empty() { "none".to_string() } else { offered.join(", ") };
    if w.required {
        return Err(Error::failed(format!(
            "{host}: the CA ({}) does not offer the required profile {:?} (it offers: {offers})",
            client.directory_url(),
            w.name
        )));
    }
    tracing::warn!("{host}: the CA does not offer the profile {:?} (it offers: {offers}); asking for its default", w.name);
    Ok(None)
}

/// Obtain a certificate for the site, answering HTTP-01 from its webroot,
/// with its profile, in a session: an account the CA forgot is recovered
/// and the order sent again. Returns the account id that got it too.
pub(super) fn issue_in(
    ctx: &Ctx,
    session: &Session,
    site: &Site,
    gate: Option<crate::acme::Gate>,
) -> Result<(Issued, String)> {
    let client = session.client()?;
    let host = &site.hostname;
    let profile =
        order_profile(&client, host, site.profile_wish(ctx.cfg.acme_profile.as_deref()).as_ref())?;
    ctx.progress(&format!(
        "{host}: requesting a certificate from {}{}",
        ctx.cfg.acme_server,
        profile.as_ref().map(|p| format!(" (profile {p})")).unwrap_or_default()
    ));
    let webroot = ctx.cfg.site_wellknown(&site.siteid);
    crate::fsutil::create_dir_all_mode(&webroot, 0o755)?;
    let opts = OrderOptions { profile, replaces: None, gate };
    let issued = session.run(|c, id| {
        c.issue_with(host, &webroot, ctx.cfg.key_type, &opts).map(|i| (i, id.to_string()))
    })?;
    ctx.progress(&format!("{host}: certificate issued"));
    Ok(issued)
}
