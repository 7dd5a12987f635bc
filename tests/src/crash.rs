//! What the crash-safety child (`src/bin/crash_child.rs`) and its test
//! (`tests/crash.rs`) agree on: the group-commit rounds, and the switches
//! that make the child stop at a chosen moment or plant an ordering bug, so
//! the test can show that its check catches one. The switches are
//! environment variables read by the child alone; the product has none.

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

/// Set (to anything): the child stops doing anything once it has reported
/// its first login, and waits to be killed. That is a kill at the very
/// moment the login reply exists, every time.
pub const FREEZE_AFTER_LOGIN: &str = "CRASH_CHILD_FREEZE_AFTER_LOGIN";

/// Names a [`Plant`]: the child's runner then breaks an order the engine
/// keeps, as a buggy engine or runtime would.
pub const PLANT: &str = "CRASH_CHILD_PLANT";

/// An ordering bug the child can plant in what it tells the engine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Plant {
    /// Every credentials write is reported committed at once and made as
    /// the next effect: the reply that waited for it is released while the
    /// write is still owed, a reply before its commit.
    ReplyBeforeCommit,
    /// Consuming a passcode is reported committed at once and made as the
    /// next effect, after the session is stored: a session stored (and its
    /// reply released) before its passcode was consumed.
    SessionBeforeConsume,
}

impl Plant {
    /// The value of [`PLANT`] that names this plant.
    pub fn as_str(self) -> &'static str {
        match self {
            Plant::ReplyBeforeCommit => "reply-before-commit",
            Plant::SessionBeforeConsume => "session-before-consume",
        }
    }

    /// The plant a value of [`PLANT`] names.
    pub fn parse(text: &str) -> Option<Plant> {
        [Plant::ReplyBeforeCommit, Plant::SessionBeforeConsume].into_iter().find(|p| p.as_str() == text)
    }
}
