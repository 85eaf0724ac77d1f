//! Getting certificates from the CA for the engine: the account (reused, or
//! created once per server and stored where certbot keeps it), issuance, and
//! the renewal parameters a lineage's conf records.

use super::ctx::Ctx;
use crate::accounts;
use crate::acme::{AccountKey, AcmeClient, ClientOptions, Issued};
use crate::error::{Error, Result};
use crate::store::RenewalParams;
use std::time::Duration;

/// Overall deadline for one issuance.
pub const ISSUE_DEADLINE: Duration = Duration::from_secs(90);

fn options(ctx: &Ctx, server: &str) -> ClientOptions {
    ClientOptions { directory: server.to_string(), ca_bundle: ctx.cfg.acme_ca_bundle.clone(), deadline: ISSUE_DEADLINE }
}

/// A client with a registered account: the stored one for this server, or a
/// new one (registered, then stored in certbot's layout). Returns the account id too.
pub fn client(ctx: &Ctx) -> Result<(AcmeClient, String)> {
    client_for(ctx, &ctx.cfg.acme_server)
}

/// [`client`] for a given server (a lineage's conf may name another one).
pub fn client_for(ctx: &Ctx, server: &str) -> Result<(AcmeClient, String)> {
    tracing::trace!(server, "connecting to the ACME server");
    let le = &ctx.cfg.letsencrypt_dir;
    if let Some(acct) = accounts::load(le, server)? {
        let c = AcmeClient::connect(options(ctx, server), acct.key, Some(acct.uri))?;
        return Ok((c, acct.id));
    }
    let key = AccountKey::generate().map_err(Error::failed)?;
    let c = AcmeClient::connect(options(ctx, server), key, None)?;
    ctx.progress(&format!("registering an ACME account with {server}"));
    let uri = c.ensure_account(ctx.cfg.contact_email.as_deref())?;
    let id = accounts::save(le, server, c.key(), &uri)?;
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

/// Renewal parameters for a site's lineage, naming `account`. No I/O.
pub fn renewal_params(ctx: &Ctx, siteid: &str, account: Option<String>) -> RenewalParams {
    RenewalParams { account, server: ctx.cfg.acme_server.clone(), webroot: ctx.cfg.site_wellknown(siteid), key_type: ctx.cfg.key_type }
}

/// Obtain a certificate for `host`, answering HTTP-01 from the site's webroot.
pub fn issue(ctx: &Ctx, client: &AcmeClient, siteid: &str, host: &str) -> Result<Issued> {
    ctx.progress(&format!("{host}: requesting a certificate from {}", ctx.cfg.acme_server));
    let webroot = ctx.cfg.site_wellknown(siteid);
    crate::fsutil::create_dir_all_mode(&webroot, 0o755)?;
    let issued = client.issue(host, &webroot, ctx.cfg.key_type)?;
    ctx.progress(&format!("{host}: certificate issued"));
    Ok(issued)
}
