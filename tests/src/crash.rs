//! What the crash-safety child (`src/bin/crash_child.rs`) and its test
//! (`tests/crash.rs`) agree on for the group-commit rounds.

use tokenizer_auth_engine::MasterToken;

/// Sessions per group.
pub const GROUP: u32 = 16;

/// The master token of session `j` of group `g` in `round` (`j` =
/// [`GROUP`] + 2 names the session the conflicting batch would write).
pub fn group_master(round: u32, g: u32, j: u32) -> MasterToken {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&round.to_be_bytes());
    bytes[4..8].copy_from_slice(&g.to_be_bytes());
    bytes[8..12].copy_from_slice(&j.to_be_bytes());
    MasterToken::from_bytes(bytes)
}
