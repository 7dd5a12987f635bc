//! What keying the passcode digests costs a login: one check of a keyed
//! digest (HMAC-SHA-256 under the server key of SHA-256(salt ‖ code)) next
//! to one of the unkeyed digest it replaced (docs/SECURITY.md, "Secrets at
//! rest").
//!
//! `cargo bench -p tokenizer-auth-engine --all-features --bench passcode`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tokenizer_auth_engine::{ServerKey, StoredPasscode};

const UNKEYED: &str =
    "sha256$00112233445566778899aabbccddeeff$0011223344556677889900112233445566778899001122334455667788990011";

fn passcode_digest(c: &mut Criterion) {
    let key = ServerKey::from_bytes([7; 32]);
    let unkeyed = StoredPasscode::from_column(UNKEYED);
    let keyed = unkeyed.keyed(&key, [0; 16]);
    assert!(matches!(keyed, StoredPasscode::Keyed { .. }));
    let mut group = c.benchmark_group("passcode_digest");
    group.bench_function("matches_keyed", |b| b.iter(|| keyed.matches(&key, black_box("AB12CD"))));
    group.bench_function("matches_unkeyed", |b| b.iter(|| unkeyed.matches(&key, black_box("AB12CD"))));
    group.finish();
}

criterion_group!(benches, passcode_digest);
criterion_main!(benches);
