//! Bytes on the wire: the native line protocol, the legacy one-shot framing,
//! the requests both carry, and the replies. Every decoder here is total:
//! any input gives a value or an error, never a panic, and never an
//! allocation beyond the bounds the caller set.

pub mod legacy;
pub mod native;
pub mod pickle;
pub mod proxy;
pub mod reply;
pub mod request;
