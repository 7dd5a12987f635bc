//! Passwords: argon2id hashing and verification, run outside the engine.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use subtle::ConstantTimeEq;
use tokenizer_auth_engine::{PasswordHash, Secret};

/// Hashing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// The cost is out of argon2's range.
    #[error("password hashing failed: {0}")]
    Cost(argon2::Error),
    /// The OS gave no randomness for the dummy password.
    #[error("password hashing failed: {0}")]
    NoRandomness(getrandom::Error),
    /// argon2 refused to hash (it draws its salt from the OS).
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
}

/// Argon2id cost parameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Cost {
    /// The product's cost: m = 19 MiB, t = 2, p = 1 (OWASP's argon2id
    /// minimum). Nothing below it is used outside tests that ask for it.
    pub const PRODUCT: Cost = Cost { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };

    /// A cheap cost for tests that say so explicitly. Never for real use.
    pub const TEST_ONLY: Cost = Cost { memory_kib: 64, iterations: 1, parallelism: 1 };
}

/// Hashes and verifies passwords with argon2id at one cost. (Not argon2's
/// `PasswordHasher` trait, which it uses.)
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    dummy: PasswordHash,
}

impl PasswordHasher {
    /// A hasher at `cost`. It makes its dummy hash (for unknown emails) at
    /// once, so it costs one hash to build.
    pub fn new(cost: Cost) -> Result<PasswordHasher, HashError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None).map_err(HashError::Cost)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut hasher = PasswordHasher { argon2, dummy: PasswordHash::Phc(String::new()) };
        let mut random = [0u8; 24];
        getrandom::fill(&mut random).map_err(HashError::NoRandomness)?;
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        hasher.dummy = hasher.hash(&Secret::new(password))?;
        Ok(hasher)
    }

    /// The hash an unknown email's password is verified against: same
    /// algorithm and cost as every real one, of a password nobody knows.
    pub fn dummy(&self) -> &PasswordHash {
        &self.dummy
    }

    /// Hashes a password into a PHC string, with a fresh random salt.
    pub fn hash(&self, password: &Secret) -> Result<PasswordHash, HashError> {
        let phc = self.argon2.hash_password(password.expose().as_bytes()).map_err(HashError::Hash)?;
        Ok(PasswordHash::Phc(phc.to_string()))
    }

    /// Whether `candidate` is the password behind `stored`. A legacy
    /// plaintext is compared in constant time after a dummy verification,
    /// so it costs what a real one does; a malformed hash never matches.
    pub fn verify(&self, stored: &PasswordHash, candidate: &Secret) -> bool {
        match stored {
            PasswordHash::Phc(phc) => match argon2::password_hash::phc::PasswordHash::new(phc) {
                Ok(parsed) => self.argon2.verify_password(candidate.expose().as_bytes(), &parsed).is_ok(),
                Err(_) => {
                    self.burn(candidate);
                    false
                }
            },
            PasswordHash::Plain(plain) => {
                self.burn(candidate);
                plain.expose().as_bytes().ct_eq(candidate.expose().as_bytes()).into()
            }
        }
    }

    /// Spends one verification's worth of work.
    fn burn(&self, candidate: &Secret) {
        if let PasswordHash::Phc(phc) = &self.dummy
            && let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(phc)
        {
            let _ = self.argon2.verify_password(candidate.expose().as_bytes(), &parsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The product's cost never drops below OWASP's argon2id minimum.
    const _: () = assert!(Cost::PRODUCT.memory_kib >= 19 * 1024 && Cost::PRODUCT.iterations >= 2);

    #[test]
    fn hashes_verify_and_plaintexts_compare() {
        // Cheap parameters: this test checks behaviour, not cost.
        let hasher = PasswordHasher::new(Cost::TEST_ONLY).unwrap();
        let pw = Secret::new("correct horse");
        let hash = hasher.hash(&pw).unwrap();
        let PasswordHash::Phc(phc) = &hash else { panic!() };
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(hasher.verify(&hash, &pw));
        assert!(!hasher.verify(&hash, &Secret::new("wrong")));
        assert!(!hasher.verify(hasher.dummy(), &pw));
        assert!(hasher.verify(&PasswordHash::from_column("legacy"), &Secret::new("legacy")));
        assert!(!hasher.verify(&PasswordHash::from_column("legacy"), &Secret::new("legacy!")));
        assert!(!hasher.verify(&PasswordHash::Phc("$argon2id$garbage".into()), &pw));
    }
}
