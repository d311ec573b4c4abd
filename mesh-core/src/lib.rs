//! wip
pub mod codec;
pub mod formation;
pub mod record;
