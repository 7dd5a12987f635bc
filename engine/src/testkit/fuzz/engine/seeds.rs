//! The `engine` target's seed inputs: real sessions and hostile ones,
//! encoded so that `arbitrary` decodes them back to their scripts.

use super::script::*;

/// Writes values in the layout `arbitrary` 1.x reads them back from
/// (little-endian integers, `u8 & 1` booleans, an enum's variant as a `u32`
/// scaled by its number of variants), so seed inputs can be written as
/// scripts. [`engine_seeds`] checks that every seed decodes to the script it
/// was written from.
trait Encode {
    fn encode(&self, out: &mut Vec<u8>);
}

fn variant(out: &mut Vec<u8>, index: u64, count: u64) {
    let tag = ((index << 32).div_ceil(count)) as u32;
    out.extend_from_slice(&tag.to_le_bytes());
}

impl Encode for u8 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Encode for u16 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for u32 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Encode for Chunk {
    fn encode(&self, out: &mut Vec<u8>) {
        let len = self.0.len().min(255);
        out.push(len as u8);
        out.extend_from_slice(&self.0[..len]);
    }
}

impl Encode for Knobs {
    fn encode(&self, out: &mut Vec<u8>) {
        for b in [self.max_connections, self.max_pipeline, self.max_password_checks, self.max_line, self.max_backlog] {
            b.encode(out);
        }
        self.unlimited_age.encode(out);
    }
}

impl Encode for ListenerPick {
    fn encode(&self, out: &mut Vec<u8>) {
        variant(out, *self as u64, 3);
    }
}

impl Encode for Ending {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Ending::Lf => variant(out, 0, 4),
            Ending::CrLf => variant(out, 1, 4),
            Ending::Bare => variant(out, 2, 4),
            Ending::Split(at) => {
                variant(out, 3, 4);
                at.encode(out);
            }
        }
    }
}

impl Encode for Outcome {
    fn encode(&self, out: &mut Vec<u8>) {
        let index = match self {
            Outcome::Honest => 0,
            Outcome::Failed => 1,
            Outcome::Conflict => 2,
            Outcome::EmptyRead => 3,
            Outcome::Committed => 4,
            Outcome::Verified(_) => 5,
            Outcome::Hashed => 6,
            Outcome::Sent => 7,
        };
        variant(out, index, 8);
        if let Outcome::Verified(v) = self {
            v.encode(out);
        }
    }
}

impl Encode for PasscodePick {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PasscodePick::Mailed(i) => {
                variant(out, 0, 3);
                i.encode(out);
            }
            PasscodePick::Mangled(i) => {
                variant(out, 1, 3);
                i.encode(out);
            }
            PasscodePick::Guess(n) => {
                variant(out, 2, 3);
                n.encode(out);
            }
        }
    }
}

impl Encode for TokenPick {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TokenPick::Issued(i) => {
                variant(out, 0, 4);
                i.encode(out);
            }
            TokenPick::Upper(i) => {
                variant(out, 1, 4);
                i.encode(out);
            }
            TokenPick::Mangled(i) => {
                variant(out, 2, 4);
                i.encode(out);
            }
            TokenPick::Random(bytes) => {
                variant(out, 3, 4);
                out.extend_from_slice(bytes);
            }
        }
    }
}

impl Encode for RequestPick {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            RequestPick::Passcode { mac, user, password, phone } => {
                variant(out, 0, 3);
                out.extend_from_slice(&[*mac, *user, *password, *phone]);
            }
            RequestPick::Login { mac, user, password, phone, passcode } => {
                variant(out, 1, 3);
                out.extend_from_slice(&[*mac, *user, *password, *phone]);
                passcode.encode(out);
            }
            RequestPick::Token { token, mac, tail } => {
                variant(out, 2, 3);
                token.encode(out);
                out.extend_from_slice(&[*mac, *tail]);
            }
        }
    }
}

impl Encode for Action {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u64 = 19;
        match self {
            Action::Open { slot, peer, listener } => {
                variant(out, 0, N);
                out.extend_from_slice(&[*slot, *peer]);
                listener.encode(out);
            }
            Action::Send { slot, bytes, force } => {
                variant(out, 1, N);
                slot.encode(out);
                bytes.encode(out);
                force.encode(out);
            }
            Action::Request { slot, request, ending } => {
                variant(out, 2, N);
                slot.encode(out);
                request.encode(out);
                ending.encode(out);
            }
            Action::Flood { slot, pattern, kib, force } => {
                variant(out, 3, N);
                slot.encode(out);
                pattern.encode(out);
                kib.encode(out);
                force.encode(out);
            }
            Action::HangUp { slot } => {
                variant(out, 4, N);
                slot.encode(out);
            }
            Action::Advance { ms } => {
                variant(out, 5, N);
                ms.encode(out);
            }
            Action::AdvanceLong { minutes } => {
                variant(out, 6, N);
                minutes.encode(out);
            }
            Action::Rewind { ms } => {
                variant(out, 7, N);
                ms.encode(out);
            }
            Action::Timeout => variant(out, 8, N),
            Action::ToDeadline => variant(out, 9, N),
            Action::Execute { pick } => {
                variant(out, 10, N);
                pick.encode(out);
            }
            Action::Complete { pick, outcome } => {
                variant(out, 11, N);
                pick.encode(out);
                outcome.encode(out);
            }
            Action::Settle => variant(out, 12, N),
            Action::Stray { id, outcome } => {
                variant(out, 13, N);
                id.encode(out);
                outcome.encode(out);
            }
            Action::Replay { pick, outcome } => {
                variant(out, 14, N);
                pick.encode(out);
                outcome.encode(out);
            }
            Action::Fail { slot } => {
                variant(out, 15, N);
                slot.encode(out);
            }
            Action::Deafen { slot } => {
                variant(out, 16, N);
                slot.encode(out);
            }
            Action::Read { slot, bytes } => {
                variant(out, 17, N);
                slot.encode(out);
                bytes.encode(out);
            }
            Action::Shutdown => variant(out, 18, N),
        }
    }
}

impl Encode for Script {
    fn encode(&self, out: &mut Vec<u8>) {
        self.knobs.encode(out);
        for action in &self.actions {
            action.encode(out);
        }
    }
}

/// The seed inputs of the `engine` target, by file name: real sessions
/// (passcode, login, token checks, renewal, legacy ports, password
/// upgrade) and hostile ones (out-of-order and false results, floods,
/// clock jumps, effects abandoned by a shutdown, breaches of the driving
/// contract). Panics if a seed does not decode to the script it was
/// written from (the encoder no longer matches `arbitrary`).
pub fn engine_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Action::*;
    let knobs = Knobs {
        max_connections: 7,
        max_pipeline: 7,
        max_password_checks: 4,
        max_line: 192,
        max_backlog: 255,
        unlimited_age: false,
    };
    let ada_passcode = |slot| Request {
        slot,
        request: RequestPick::Passcode { mac: 0, user: 0, password: 0, phone: 0 },
        ending: Ending::Lf,
    };
    let ada_login = |slot| Request {
        slot,
        request: RequestPick::Login { mac: 0, user: 0, password: 0, phone: 0, passcode: PasscodePick::Mailed(0) },
        ending: Ending::Lf,
    };
    let token_check =
        |slot, token| Request { slot, request: RequestPick::Token { token, mac: 0, tail: 1 }, ending: Ending::CrLf };
    let open = |slot, peer, listener| Open { slot, peer, listener };
    let login = vec![open(0, 0, ListenerPick::Native), ada_passcode(0), Settle, ada_login(0), Settle];
    let mut seeds: Vec<(&'static str, Script)> = Vec::new();

    seeds.push(("seed-login", Script { knobs, actions: login.clone() }));

    let mut tokens = login.clone();
    tokens.extend([
        token_check(0, TokenPick::Issued(0)),
        Settle,
        token_check(0, TokenPick::Upper(0)),
        token_check(0, TokenPick::Mangled(0)),
        Settle,
        Advance { ms: 10_500 },
        token_check(0, TokenPick::Issued(0)),
        Settle,
        token_check(0, TokenPick::Issued(0)),
        Settle,
        Advance { ms: 20_000 },
        token_check(0, TokenPick::Issued(0)),
        Settle,
        HangUp { slot: 0 },
    ]);
    seeds.push(("seed-token-renew-expire", Script { knobs, actions: tokens }));

    let mut twice = login.clone();
    twice.extend([
        open(1, 0, ListenerPick::Native),
        ada_passcode(1),
        Complete { pick: 0, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Honest },
        Execute { pick: 0 },
        Complete { pick: 0, outcome: Outcome::Honest },
        Settle,
        ada_login(1),
        ada_login(0),
        Complete { pick: 1, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Honest },
        Complete { pick: 1, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Honest },
        Settle,
        ada_login(1),
        Settle,
    ]);
    seeds.push(("seed-passcode-race", Script { knobs, actions: twice }));

    let legacy = vec![
        open(2, 1, ListenerPick::LegacyPasscode),
        Request {
            slot: 2,
            request: RequestPick::Passcode { mac: 2, user: 1, password: 0, phone: 0 },
            ending: Ending::Bare,
        },
        Settle,
        open(3, 1, ListenerPick::LegacyLogin),
        Request {
            slot: 3,
            request: RequestPick::Login { mac: 2, user: 1, password: 0, phone: 0, passcode: PasscodePick::Mailed(0) },
            ending: Ending::Split(20),
        },
        Settle,
        open(4, 3, ListenerPick::LegacyLogin),
        Send { slot: 4, bytes: Chunk(b"aa:bb:cc:dd:ee:ff|eve@example.com|".to_vec()), force: false },
        Advance { ms: 300 },
        ToDeadline,
        Settle,
        open(5, 2, ListenerPick::LegacyPasscode),
        ToDeadline,
    ];
    seeds.push(("seed-legacy-upgrade", Script { knobs, actions: legacy }));

    let hostile = vec![
        open(0, 3, ListenerPick::Native),
        ada_passcode(0),
        Complete { pick: 0, outcome: Outcome::Failed },
        ada_passcode(0),
        Complete { pick: 0, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Honest },
        Execute { pick: 0 },
        Complete { pick: 0, outcome: Outcome::Failed },
        Settle,
        ada_passcode(0),
        Settle,
        ada_login(0),
        Complete { pick: 0, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Sent },
        ada_login(0),
        Complete { pick: 0, outcome: Outcome::Conflict },
        Stray { id: 1 << 40, outcome: Outcome::Committed },
        Replay { pick: 0, outcome: Outcome::Verified(true) },
        Rewind { ms: 5000 },
        Settle,
        Send { slot: 0, bytes: Chunk(b"\xff\xfe|||\r\n\n".to_vec()), force: false },
        Flood { slot: 0, pattern: Chunk(b"x".to_vec()), kib: 0, force: true },
        Timeout,
    ];
    seeds.push(("seed-hostile-results", Script { knobs, actions: hostile }));

    // A shutdown whose grace runs out with a passcode request's effects
    // out: the engine abandons them, and their results come late (one
    // honest, one failed, one of another kind, which is reported failed),
    // then once more, which breaks the contract.
    let abandon = vec![
        open(0, 0, ListenerPick::Native),
        open(1, 1, ListenerPick::Native),
        ada_passcode(0),
        ada_passcode(1),
        Complete { pick: 0, outcome: Outcome::Honest },
        Shutdown,
        AdvanceLong { minutes: 1 },
        Timeout,
        Stray { id: 0, outcome: Outcome::Honest },
        Stray { id: 0, outcome: Outcome::Sent },
        Settle,
        Replay { pick: 0, outcome: Outcome::Committed },
    ];
    seeds.push(("seed-shutdown-abandons", Script { knobs, actions: abandon }));

    let busy = Knobs {
        max_connections: 1,
        max_pipeline: 1,
        max_password_checks: 1,
        max_line: 0,
        max_backlog: 255,
        unlimited_age: true,
    };
    let crowd = vec![
        open(0, 0, ListenerPick::Native),
        open(1, 1, ListenerPick::Native),
        ada_passcode(0),
        ada_passcode(0),
        Flood { slot: 0, pattern: Chunk(b"require_passcode|x|y|z|w\n".to_vec()), kib: 255, force: true },
        Flood { slot: 0, pattern: Chunk(b"require_passcode|x|y|z|w\n".to_vec()), kib: 255, force: true },
        Settle,
        AdvanceLong { minutes: 2 },
        Timeout,
    ];
    seeds.push(("seed-limits", Script { knobs: busy, actions: crowd }));

    // A client that reads nothing floods malformed lines and token checks
    // against a small backlog, beside one that reads; then reads a little,
    // stalls past the write timeout, and the server shuts down.
    let tight = Knobs { max_backlog: 8, ..knobs };
    let deaf = vec![
        open(0, 0, ListenerPick::Native),
        open(1, 1, ListenerPick::Native),
        Deafen { slot: 0 },
        Flood { slot: 0, pattern: Chunk(b"x\n".to_vec()), kib: 0, force: false },
        token_check(0, TokenPick::Random([7; 32])),
        Settle,
        token_check(1, TokenPick::Random([9; 32])),
        Settle,
        Read { slot: 0, bytes: 100 },
        Flood { slot: 0, pattern: Chunk(b"x\n".to_vec()), kib: 0, force: true },
        Advance { ms: 11_000 },
        Timeout,
        open(2, 2, ListenerPick::LegacyLogin),
        Shutdown,
        open(3, 3, ListenerPick::Native),
        Settle,
        ToDeadline,
    ];
    seeds.push(("seed-deaf-client", Script { knobs: tight, actions: deaf }));

    seeds
        .into_iter()
        .map(|(name, script)| {
            let mut bytes = Vec::new();
            script.encode(&mut bytes);
            assert_eq!(decode(&bytes).as_ref(), Some(&script), "seed {name} does not decode to its script");
            (name, bytes)
        })
        .collect()
}
