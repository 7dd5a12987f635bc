//! Connection deadlines. Each connection computes its own next deadline
//! (idle, partial line, legacy wait); this table only remembers when to look
//! again. Entries are lazy: a deadline that moved later is found stale when
//! it comes due and is re-armed then, so the hot path (a request on a busy
//! connection) never touches the heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};

use crate::io::ConnId;

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(DateTime<Utc>, ConnId, u64)>>,
}

impl Timers {
    /// Looks at connection `conn` (of epoch `epoch`) again at `at`.
    pub(crate) fn schedule(&mut self, at: DateTime<Utc>, conn: ConnId, epoch: u64) {
        self.heap.push(Reverse((at, conn, epoch)));
    }

    /// The earliest entry; it may be stale, which makes a spurious wake-up.
    pub(crate) fn next(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    /// Takes the next entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, ConnId, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, ..))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }
}
