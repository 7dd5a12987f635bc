//! The store conformance suite (`tests/src/conformance`) on every store:
//! the engine test kit's in-memory model, the SQLite store and the
//! PostgreSQL store. A new store is one adapter and one line here
//! (`docs/STORES.md`).

mod memory {
    tokenizer_auth_tests::store_conformance!(tokenizer_auth_tests::conformance::MemoryUnderTest);
}

mod sqlite {
    tokenizer_auth_tests::store_conformance!(tokenizer_auth_tests::conformance::SqliteUnderTest);
}

/// On a real PostgreSQL server the suite starts (`tests/src/postgres.rs`).
mod postgres {
    tokenizer_auth_tests::store_conformance!(tokenizer_auth_tests::conformance::PgUnderTest);
}
