//! The root chain: `TrustedRoot::pinned`, `rotate` and `update` (DESIGN §4.2).
//!
//! Input: one mode byte, then the document. Mode % 4:
//! - 0: envelope bytes loaded as the pinned root;
//! - 1: a root payload, sealed here with root keys 1, 2 and 3, loaded as the pinned root;
//! - 2: envelope bytes offered as version 2 after the fixed pinned root (keys 1 and 2 of 2);
//! - 3: a root payload sealed with keys 1, 2 and 3, offered as version 2 (the fuzzer picks
//!   which keys the new root names, so every stage of `rotate` is reachable).
//!
//! Properties: no panic, no hang, bounded memory; a root that is accepted re-loads the same,
//! a rotation lands on exactly the next version of the same product and can never be
//! applied twice, and `update` agrees with `rotate`.
#![no_main]

use evergreen::trust::TrustedRoot;
use evergreen::ErrorKind;
use evergreen_fuzz::{now, root_v1, seal_root, MAX_BYTES, PRODUCT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = evergreen_fuzz::split_mode(data) else {
        return;
    };
    let envelope = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        seal_root(rest)
    };
    if mode & 2 == 0 {
        pinned(&envelope);
    } else {
        rotated(&envelope);
    }
});

fn pinned(envelope: &[u8]) {
    let Ok(root) = TrustedRoot::pinned(envelope, MAX_BYTES) else {
        return;
    };
    let again = TrustedRoot::pinned(root.envelope(), MAX_BYTES).expect("an accepted root re-loads");
    assert_eq!(root.root(), again.root());
    assert_eq!(root.root().doc_type, "root");
}

fn rotated(envelope: &[u8]) {
    let v1 = TrustedRoot::pinned(&root_v1(), MAX_BYTES).expect("the fixture root is valid");
    let result = v1.rotate(envelope, MAX_BYTES);

    // A server that offers this document once, then nothing.
    let mut offered = false;
    let updated = v1.clone().update(
        |_, accept| {
            if std::mem::replace(&mut offered, true) {
                Ok(())
            } else {
                accept(envelope)
            }
        },
        |_| Ok(()),
        now(),
        MAX_BYTES,
    );
    // A server that offers it forever: the walk still ends.
    let looped = v1.update(
        |_, accept| accept(envelope),
        |_| Ok(()),
        now(),
        MAX_BYTES,
    );
    assert!(
        looped.is_err(),
        "the same root cannot be walked through twice"
    );

    let Ok(v2) = result else {
        assert!(updated.is_err(), "update accepted what rotate refused");
        return;
    };
    assert_eq!(v2.root().version, 2);
    assert_eq!(v2.root().product, PRODUCT);
    assert_eq!(updated.is_ok(), v2.check_unexpired(now()).is_ok());
    let twice = v2
        .rotate(envelope, MAX_BYTES)
        .expect_err("a root applied twice");
    assert_eq!(twice.kind(), ErrorKind::MetadataRollback);
}
