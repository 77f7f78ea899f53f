//! A gzip member inflated as its bytes arrive (`gzip::Inflater`, through the library's
//! `fuzz_inflate`): a device feeds it a compressed image's bytes as they come off the
//! network, before their hash says whether they are the signed blob, and the publisher
//! feeds it an image file (docs/design.md §13, 37).
//!
//! Input: one mode byte, then the bytes. Bits 0–2 of the mode pick the size of the pieces
//! the bytes are fed in: 1, 2, 7, 64, 512, 4096 or 65536 bytes, or all at once.
//!
//! Properties: no panic, no hang, bounded memory (the output is cut off at 16 MiB); no
//! piece is left partly unused behind an empty output; the output and the verdict do not
//! depend on how the bytes are cut into pieces (compared with feeding them all at once);
//! and a member accepted whole, with nothing after it, inflates by flate2's own gzip
//! decoder (another header parser) to the same bytes, the length `finish` returned (for
//! inputs under 64 KiB: flate2 refuses longer header fields).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;

/// The most output followed: a bomb is a bomb well before this.
const MAX_OUT: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((mode, gz)) = evergreen_fuzz::split_mode(data) else {
        return;
    };
    let piece = [1, 2, 7, 64, 512, 4096, 65536, usize::MAX][usize::from(mode & 7)];
    let Some(whole) = inflate(gz, usize::MAX) else {
        return;
    };
    let Some(pieces) = inflate(gz, piece) else {
        return;
    };
    assert_eq!(whole, pieces, "fed {piece} bytes at a time");
    let (Ok(len), out) = whole else {
        return;
    };
    assert_eq!(len, out.len() as u64);
    // flate2 refuses a header field (FNAME, FCOMMENT) of more than 65,535 bytes, which
    // ours takes up to 128 KiB of: only shorter inputs are compared.
    if gz.len() > 65_535 {
        return;
    }
    let mut theirs = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut theirs)
        .expect("flate2 reads a member the inflater accepted");
    assert!(theirs == out, "flate2 inflates it to other bytes");
});

/// The verdict and the output of `gz` fed `piece` bytes at a time; `None` past
/// [`MAX_OUT`]. A piece left partly unused is a failure.
fn inflate(gz: &[u8], piece: usize) -> Option<(Result<u64, String>, Vec<u8>)> {
    let mut out = Vec::new();
    let verdict = evergreen::fuzz_inflate(gz, piece, &mut |made| {
        out.extend_from_slice(made);
        out.len() <= MAX_OUT
    });
    match &verdict {
        Err(e) if e == "stopped" => return None,
        Err(e) => assert!(!e.ends_with("bytes left unused"), "{e}"),
        Ok(_) => {}
    }
    Some((verdict, out))
}
