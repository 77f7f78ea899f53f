//! The C ABI over [`Updater`](crate::Updater) (DESIGN §8; conventions in `docs/c-abi.md`).
//!
//! Every export is `evg_`-prefixed, returns an [`evg_status`](error::evg_status) (or, for
//! accessors, a value that is NULL/0 on error), runs inside a panic boundary and treats NULL
//! and invalid UTF-8 as [`EVG_CONFIG`](error::evg_status::EVG_CONFIG) errors. Out-params come
//! last and are written only on success. The header `include/evergreen.h` is generated from
//! this module by cbindgen and committed; `tests/header.rs` fails when it is stale.
//!
//! One file per concern: status codes and the per-thread last error (`error`), the panic
//! boundary (`panic`), argument and string conversion (`handle`), handles held by running
//! calls (`lease`), the updater's exports (`updater`), offers (`offer`), progress and event
//! callbacks (`callbacks`) and the host-supplied transport and boot selector (`hooks`).
// The C names (`evg_updater`, `EVG_OK`) are the ABI; Rust naming rules do not apply here.
#![allow(non_camel_case_types)]
#![allow(unsafe_code)]

pub mod callbacks;
pub mod error;
pub mod handle;
pub mod hooks;
mod lease;
pub mod offer;
pub mod panic;
pub mod updater;
