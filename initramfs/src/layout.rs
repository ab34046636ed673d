//! The layout arithmetic lives in the library (`rollout::layout`), shared with
//! the server's config validation; the installer uses it under this name.

pub use rollout::layout::*;
pub use rollout::wire::layout::MIB;
pub use rollout::wire::Firmware;
