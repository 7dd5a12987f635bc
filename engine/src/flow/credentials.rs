//! The credential check shared by passcode requests and logins: exactly one
//! password verification on every path, against a dummy hash when the email
//! is unknown, so neither the reply nor its timing tells whether an account
//! exists.

use rand_core::CryptoRng;

use crate::config::Config;
use crate::flow::{Ctx, upgrade};
use crate::password::PasswordHash;
use crate::secret::Secret;
use crate::store::UserRecord;

/// The one verification a credential check makes: the stored hash (the
/// dummy one for an unknown email), and the candidate.
pub(crate) fn verification(config: &Config, user: Option<&UserRecord>, password: &Secret) -> (PasswordHash, Secret) {
    let hash = user.map_or(&config.dummy_password, |u| &u.password).clone();
    (hash, password.clone())
}

/// Whether the credentials hold: the account exists, the password verified,
/// and the phone matches the one on file (when one is).
pub(crate) fn accepted(user: Option<&UserRecord>, phone: &str, verified: bool) -> bool {
    user.is_some_and(|u| verified && (u.phone.is_empty() || u.phone == phone))
}

/// After a successful check: a plaintext password left by the old server is
/// rehashed on the side, without delaying the reply.
pub(crate) fn upgrade_if_needed<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, user: &UserRecord, password: &Secret) {
    if user.password.needs_upgrade() && ctx.password_capacity() {
        ctx.detached.push(upgrade::start(user, password));
    }
}
