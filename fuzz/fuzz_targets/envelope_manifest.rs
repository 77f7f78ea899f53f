//! DSSE envelopes and channel manifests: `trust::open` and `manifest::verify`.
//!
//! Input: one mode byte, then the document. Bit 0 of the mode picks what the rest is:
//! - 0: envelope bytes as they would arrive from a server (attacks on the envelope syntax,
//!   the signature list and the threshold count);
//! - 1: a manifest payload, sealed here with the fixed test key 7, so the parser and the
//!   freshness rules behind the signature are reached.
//!
//! The other bits pick the device's freshness state (see `evergreen_fuzz::freshness`).
//!
//! Properties: no panic, no hang, bounded memory; and what is accepted re-verifies, keeps
//! its meaning through a re-serialisation, and obeys the sequence rule (DESIGN §5.1 rule 5).
#![no_main]

use evergreen::manifest::{self, Freshness, Manifest, Verified};
use evergreen::trust::{self, MANIFEST_TYPE};
use evergreen::ErrorKind;
use evergreen_fuzz::{expect, freshness, key, keyset, manifest_key, seal_manifest, MAX_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = evergreen_fuzz::split_mode(data) else {
        return;
    };
    let fresh = freshness(mode >> 1);
    let envelope = if mode & 1 == 0 {
        open_raw(rest);
        rest.to_vec()
    } else {
        seal_manifest(rest)
    };
    if let Ok(m) = verify(&envelope, &fresh) {
        accepted_manifest_holds(&envelope, &m, &fresh);
    }
});

fn verify(envelope: &[u8], fresh: &Freshness) -> evergreen::Result<Verified<Manifest>> {
    manifest::verify(envelope, &keyset(&[&manifest_key()], 1), &expect(), fresh)
}

/// `open` on untrusted bytes, with one key and with a 2-of-3 set (the distinct-key count).
fn open_raw(bytes: &[u8]) {
    let (k7, k8, k9) = (manifest_key(), key(8), key(9));
    let single = keyset(&[&k7], 1);
    if let Ok(payload) = trust::open(bytes, MANIFEST_TYPE, &single, MAX_BYTES) {
        // Whatever `open` accepts is exactly the signed bytes: sealing them again opens again.
        let again = trust::open(&seal_manifest(&payload), MANIFEST_TYPE, &single, MAX_BYTES);
        assert_eq!(again.ok().as_deref(), Some(&payload[..]));
    }
    let _ = trust::open(
        bytes,
        MANIFEST_TYPE,
        &keyset(&[&k7, &k8, &k9], 2),
        MAX_BYTES,
    );
}

/// `envelope`: the bytes that verified to `m` (what the updater caches).
fn accepted_manifest_holds(envelope: &[u8], m: &Verified<Manifest>, fresh: &Freshness) {
    // The cached envelope re-verifies to the same document.
    let again = verify(envelope, fresh).expect("an accepted envelope re-verifies");
    assert_eq!(**m, *again);
    assert_eq!(m.payload_sha256(), again.payload_sha256());

    // Once accepted, the same bytes are accepted again, other bytes under the same
    // sequence and any older sequence are refused as a rollback.
    let seen = fresh.advanced(m);
    verify(envelope, &seen).expect("the same bytes at the same sequence are accepted");
    let payload = trust::open(
        envelope,
        MANIFEST_TYPE,
        &keyset(&[&manifest_key()], 1),
        MAX_BYTES,
    )
    .expect("an accepted envelope opens");
    let mut other = payload.clone();
    other.push(b' ');
    let refused = verify(&seal_manifest(&other), &seen).expect_err("other bytes, same sequence");
    assert_eq!(refused.kind(), ErrorKind::MetadataRollback);
    if let Some(newer) = m.sequence.checked_add(1) {
        let ahead = Freshness {
            last_seen: Some((newer, String::new())),
            ..fresh.clone()
        };
        let refused = verify(envelope, &ahead).expect_err("an older sequence");
        assert_eq!(refused.kind(), ErrorKind::MetadataRollback);
    }

    // Re-serialised (as the CLI does when it re-signs), the manifest means the same.
    let reissued = Freshness {
        last_seen: None,
        ..fresh.clone()
    };
    let resigned = verify(&seal_manifest(&m.to_bytes()), &reissued)
        .expect("a re-serialised accepted manifest verifies");
    assert_eq!(**m, *resigned);
}
