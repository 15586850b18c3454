//! The host-filesystem share of the micro-VM: a 9P2000.L file server that
//! runs inside the launcher process (see docs/design.md for why 9P2000.L
//! and why in-process). Transport-agnostic: `virtio::p9` feeds it one
//! request message at a time and sends back the response it produces.
//!
//! (Being written; the server lands in the next step.)
