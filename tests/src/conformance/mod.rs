//! The store conformance suite: one set of checks of the batch rules
//! (`engine/src/store.rs`, `engine/src/limits.rs`) that every store passes,
//! the in-memory model the engine's tests run on and the SQLite store the
//! servers run on alike (`docs/STORES.md`).
//!
//! A store takes part through a small adapter, [`StoreUnderTest`]: the
//! calls the product makes of it, nothing more. Every check is a function
//! generic over it, and [`store_conformance!`](crate::store_conformance)
//! makes one `#[test]` per check for a store:
//!
//! ```ignore
//! mod sqlite {
//!     tokenizer_auth_tests::store_conformance!(tokenizer_auth_tests::conformance::SqliteUnderTest);
//! }
//! ```
//!
//! The list of checks is kept once, in that macro; a check left out of it
//! is dead code, which the build refuses (`-D warnings`).

mod checks;
mod memory;
mod postgres;
mod sqlite;

use tokenizer_auth_engine::{Lookup, Mac, PasswordHash, Snapshot, UserRecord, WriteBatch};

pub use memory::MemoryUnderTest;
pub use postgres::PgUnderTest;
pub use sqlite::SqliteUnderTest;

/// What a store made of a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Applied, all of it, and durable.
    Committed,
    /// Its expectation did not hold, or a reservation did not fit: nothing
    /// of it was applied.
    Conflict,
}

/// A store as the checks drive it: the calls the servers and the admin
/// commands make of it. A store failure (an IO error) panics: no check
/// expects one.
pub trait StoreUnderTest: Sized + Send + 'static {
    /// A handle on a new, empty store, as a server's worker holds it.
    fn create() -> Self;

    /// Another handle on the same records, as another process would open
    /// it: its own connection, sharing nothing in memory. The races give
    /// one to each thread.
    fn connect(&self) -> Self;

    /// Every other way the product reaches the same records, named: another
    /// worker of the same server, another process, another server. A write
    /// through any handle is seen by a read through any other.
    fn peers(&self) -> Vec<(&'static str, Self)>;

    /// Adds an account (the `user add` command).
    fn add_user(&mut self, user: &UserRecord);

    /// Answers lookups, in their order, from one consistent view (as a
    /// server's readers do).
    fn read_many(&self, lookups: &[Lookup]) -> Vec<Snapshot>;

    /// Commits batches as one group: each applied in order, all of it or
    /// nothing, its expectation checked after the batches before it; the
    /// outcomes in the batches' order.
    fn write_group(&mut self, batches: &[&WriteBatch]) -> Vec<Outcome>;

    /// Ends an account's sessions, or only those of one device (the
    /// `session revoke` command). Returns how many ended.
    fn revoke(&mut self, email: &str, mac: Option<Mac>) -> usize;

    /// Replaces an account's password and ends its sessions (the `user
    /// passwd` command). Returns whether the account exists.
    fn set_password(&mut self, email: &str, password: &PasswordHash) -> bool;

    /// Answers one lookup.
    fn read(&self, lookup: &Lookup) -> Snapshot {
        self.read_many(std::slice::from_ref(lookup)).pop().expect("one snapshot per lookup")
    }

    /// Commits one batch.
    fn write(&mut self, batch: &WriteBatch) -> Outcome {
        self.write_group(&[batch]).pop().expect("one outcome per batch")
    }
}

/// Makes one `#[test]` per conformance check for a store type that
/// implements [`StoreUnderTest`]. The list of checks lives here, once.
#[macro_export]
macro_rules! store_conformance {
    (@list $mode:ident $($arg:tt)*) => {
        $crate::store_conformance! { @$mode ($($arg)*) [
            a_passcode_reads_back_as_put_and_a_put_replaces_it,
            each_passcode_key_is_a_passcode_of_its_own,
            a_delete_removes_its_passcode_and_nothing_else,
            a_guess_counts_once_on_its_passcode_only,
            a_window_counts_up_to_its_bound_then_refuses,
            a_window_never_goes_back,
            a_streak_refuses_until_its_lockout_has_passed_then_starts_over,
            a_refund_gives_back_one_place_in_its_own_window_only,
            a_reset_removes_its_counter_only,
            a_passcode_expectation_holds_only_on_the_passcode_as_read,
            a_failed_passcode_expectation_writes_nothing,
            a_reservation_that_does_not_fit_undoes_its_whole_batch,
            the_ops_of_a_batch_apply_in_order,
            sessions_are_put_replaced_and_deleted,
            a_password_is_replaced_on_an_existing_account_only,
            a_session_expectation_holds_only_on_the_session_as_read,
            a_rotation_reads_back_by_its_tag_and_a_put_replaces_it,
            a_session_keeps_the_records_of_its_last_rotations_only,
            a_revocation_removes_its_session_and_its_rotations_only,
            a_password_expectation_holds_only_on_the_password_as_read,
            a_failed_credentials_expectation_writes_nothing,
            a_group_applies_its_batches_in_order_each_seeing_the_ones_before,
            a_conflict_in_a_group_undoes_its_own_batch_only,
            expired_records_are_kept_as_stored_for_the_engine_to_judge,
            times_read_back_to_the_millisecond_never_later,
            a_passcode_is_consumed_once_however_many_connections_race,
            a_passcode_takes_no_more_guesses_than_its_bound_however_many_race,
            a_bound_holds_exactly_however_many_connections_race,
            every_handle_sees_every_other_handles_writes,
            writers_taking_turns_with_no_read_between_are_all_seen,
            an_admin_revoke_or_password_change_is_seen_by_every_handle,
        ] }
    };
    (@tests ($store:ty) [$($check:ident),* $(,)?]) => {
        $(
            #[test]
            fn $check() {
                $crate::conformance::$check::<$store>();
            }
        )*
    };
    (@checks () [$($check:ident),* $(,)?]) => {
        $(
            #[doc = concat!("The conformance check `", stringify!($check), "` (see `checks.rs`).")]
            pub fn $check<S: StoreUnderTest>() {
                checks::$check::<S>();
            }
        )*
    };
    ($store:ty) => {
        $crate::store_conformance! { @list tests $store }
    };
}

store_conformance! { @list checks }
