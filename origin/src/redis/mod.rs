//! Redis: the link and its health, vehicle locks, the GEO availability index, the L1/L2 caches
//! and the edge cache generations (Upstash REST). Redis speeds things up and is never the truth:
//! every user of it degrades to PostgreSQL (or to a miss) when it does not answer.

pub mod availability;
pub mod cache;
pub(crate) mod deny_sync;
pub(crate) mod edge_gen;
pub(crate) mod front_door;
pub(crate) mod key_sync;
pub mod link;
pub mod locks;
