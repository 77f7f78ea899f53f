//! One gzip member (RFC 1952) inflated as its bytes arrive, for compressed images: the
//! publisher inflates one to learn what it installs, a device inflates the download
//! straight into the slot. Memory stays flat whatever the image's size: the header (held
//! whole until it parses, at most [`MAX_HEADER`] bytes), the inflater's 32 KiB window and
//! one output buffer.
//!
//! The header is parsed here rather than with flate2's `GzDecoder`: the raw inflater is
//! the one zip extraction already links, and a decoder that takes bytes pushed to it (as
//! the download receives them) rather than pulled through `Read` fits the download loop.

use flate2::{Decompress, FlushDecompress, Status};

/// The longest header taken (its fixed part, FEXTRA, FNAME, FCOMMENT and FHCRC): a name
/// and comment that never end would otherwise be held in memory for as long as they come.
const MAX_HEADER: usize = 128 << 10;
/// Output handed to the sink at a time.
const OUT_CHUNK: usize = 64 << 10;

/// Where in the member the bytes fed so far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Body,
    Trailer,
    Done,
}

/// Inflates one gzip member fed in pieces ([`Inflater::feed`]); [`Inflater::finish`]
/// says whether the member was whole, with a matching trailer.
pub(crate) struct Inflater {
    stage: Stage,
    /// The header while it is incomplete; then the trailer's bytes.
    held: Vec<u8>,
    inflate: Decompress,
    crc: crc32fast::Hasher,
    out: Vec<u8>,
    inflated: u64,
    /// What is wrong after the deflate data ended (the trailer, bytes past the member),
    /// for [`Inflater::finish`] to say: nothing is made from those bytes, so a download
    /// judges them once its hash has said whether they are the signed blob.
    after_end: Option<String>,
    /// Invalid deflate data, found by a call that also made output: that output is handed
    /// on first, and this is said from the next call on, so that the output and the count
    /// of inflated bytes it names do not depend on how the input was cut into pieces.
    invalid: Option<String>,
}

impl Inflater {
    pub(crate) fn new() -> Inflater {
        Inflater {
            stage: Stage::Header,
            held: Vec::new(),
            inflate: Decompress::new(false),
            crc: crc32fast::Hasher::new(),
            out: vec![0; OUT_CHUNK],
            inflated: 0,
            after_end: None,
            invalid: None,
        }
    }

    /// Inflates from the front of `input`, the next bytes of the member, moving it past
    /// the bytes used: the next output, or nothing once `input` is used up (feed more) or
    /// the member ended. Data that is not gzip or not valid deflate is what was found;
    /// bytes after the deflate data are taken in whatever they are, and a wrong trailer
    /// or bytes past it (a second member, trailing garbage) are [`Inflater::finish`]'s
    /// verdict. The caller
    /// calls again until it gets nothing and handles the output (and a failure to write
    /// it) itself: no callback, so one copy serves the publisher and the device.
    pub(crate) fn inflate(&mut self, input: &mut &[u8]) -> std::result::Result<&[u8], String> {
        if let Some(problem) = &self.invalid {
            return Err(problem.clone());
        }
        if self.stage == Stage::Header {
            // Never more than MAX_HEADER held: the verdict on a long header is then the
            // bytes' alone, not that of how they were cut into pieces (the publisher's
            // large reads, a slow link's few KiB).
            let before = self.held.len();
            let take = input.len().min(MAX_HEADER - before);
            self.held.extend_from_slice(&input[..take]);
            match parse_header(&self.held)? {
                None if self.held.len() == MAX_HEADER => {
                    return Err(format!(
                        "expected a gzip header of at most {MAX_HEADER} bytes, found a longer one"
                    ))
                }
                None => {
                    *input = &input[take..];
                    return Ok(&[]);
                }
                Some(len) => {
                    *input = &input[len - before..];
                    self.held.clear();
                    self.stage = Stage::Body;
                }
            }
        }
        loop {
            match self.stage {
                Stage::Body => {
                    let (before_in, before_out) =
                        (self.inflate.total_in(), self.inflate.total_out());
                    let result =
                        self.inflate
                            .decompress(input, &mut self.out, FlushDecompress::None);
                    // Counted on failure too: what it made before the bad data is output.
                    let used = (self.inflate.total_in() - before_in) as usize;
                    let made = (self.inflate.total_out() - before_out) as usize;
                    *input = &input[used..];
                    let status = match result {
                        Ok(status) => status,
                        Err(e) => {
                            let problem = format!(
                                "expected deflate data, found it invalid after {} inflated bytes ({e})",
                                self.inflated + made as u64
                            );
                            if made == 0 {
                                return Err(problem);
                            }
                            self.invalid = Some(problem);
                            Status::Ok
                        }
                    };
                    if status == Status::StreamEnd {
                        self.stage = Stage::Trailer;
                    }
                    if made > 0 {
                        self.crc.update(&self.out[..made]);
                        self.inflated += made as u64;
                        return Ok(&self.out[..made]);
                    }
                    if status != Status::StreamEnd && used == 0 {
                        return Ok(&[]);
                    }
                }
                Stage::Trailer if !input.is_empty() => {
                    let take = (8 - self.held.len()).min(input.len());
                    self.held.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if self.held.len() == 8 {
                        self.after_end = self.check_trailer().err();
                        self.stage = Stage::Done;
                    }
                }
                Stage::Done if !input.is_empty() => {
                    if self.after_end.is_none() {
                        let what = if input.starts_with(&[0x1f]) {
                            "another gzip member after it (concatenated gzip files)"
                        } else {
                            "trailing bytes after it"
                        };
                        self.after_end = Some(format!("expected one gzip member, found {what}"));
                    }
                    *input = &[];
                }
                _ => return Ok(&[]),
            }
        }
    }

    fn check_trailer(&self) -> std::result::Result<(), String> {
        let word = |at: usize| {
            u32::from_le_bytes([
                self.held[at],
                self.held[at + 1],
                self.held[at + 2],
                self.held[at + 3],
            ])
        };
        let crc = self.crc.clone().finalize();
        if word(0) != crc {
            return Err(format!(
                "expected the gzip trailer's CRC32 to be that of the inflated bytes ({crc:08x}), found {:08x}",
                word(0)
            ));
        }
        // ISIZE is the length modulo 2^32.
        if word(4) != self.inflated as u32 {
            return Err(format!(
                "expected the gzip trailer's ISIZE to be the inflated length ({} bytes, {} modulo 2^32), found {}",
                self.inflated,
                self.inflated as u32,
                word(4)
            ));
        }
        Ok(())
    }

    /// What is wrong after the deflate data, as soon as it is known, for a reader that
    /// need not wait for [`Inflater::finish`] (the publisher refuses a file there and
    /// then, rather than reading a pipe of trailing bytes that never ends).
    pub(crate) fn end_problem(&self) -> Option<&str> {
        self.after_end.as_deref()
    }

    /// The inflated length, once the member ended with a matching trailer and nothing
    /// after it; otherwise what is wrong with its end, or what it was cut short in.
    pub(crate) fn finish(&self) -> std::result::Result<u64, String> {
        let cut = match self.stage {
            Stage::Done => return self.after_end.clone().map_or(Ok(self.inflated), Err),
            Stage::Header => "its header",
            Stage::Body => "its deflate data",
            Stage::Trailer => "its 8-byte trailer",
        };
        Err(format!(
            "expected a whole gzip member, found it cut short in {cut} after {} inflated bytes",
            self.inflated
        ))
    }
}

/// Inflates `gz` fed `piece` bytes at a time (at least 1), handing each output to `out`,
/// for the `gzip_inflate` fuzz target (`cargo fuzz` builds with `--cfg fuzzing`) and the
/// unit tests: what [`Inflater::finish`] says, or the first problem. `out` returning false
/// stops it (`Err("stopped")`, a bound on the output). An empty output with bytes of a
/// piece left would drop them unseen, so it is a problem of its own.
#[cfg(any(fuzzing, test))]
pub fn fuzz_inflate(
    gz: &[u8],
    piece: usize,
    out: &mut dyn FnMut(&[u8]) -> bool,
) -> std::result::Result<u64, String> {
    let mut inflater = Inflater::new();
    for mut chunk in gz.chunks(piece.max(1)) {
        loop {
            let made = inflater.inflate(&mut chunk)?;
            if made.is_empty() {
                if !chunk.is_empty() {
                    return Err(format!("{} bytes left unused", chunk.len()));
                }
                break;
            }
            if !out(made) {
                return Err("stopped".into());
            }
        }
    }
    inflater.finish()
}

/// The length of the gzip header at the start of `h`; `None` while more bytes are needed.
fn parse_header(h: &[u8]) -> std::result::Result<Option<usize>, String> {
    const MAGIC: [u8; 3] = [0x1f, 0x8b, 8];
    // Up to the first byte that differs, whatever else has arrived: the verdict must not
    // depend on how the bytes were cut into pieces.
    if let Some(at) = h.iter().zip(MAGIC).position(|(a, b)| *a != b) {
        return Err(format!(
            "expected gzip data (1f 8b 08: deflate), found it starting {}",
            crate::trust::hex(&h[..=at])
        ));
    }
    if h.len() < 10 {
        return Ok(None);
    }
    let flags = h[3];
    if flags & 0xe0 != 0 {
        return Err(format!(
            "expected gzip header flags without the reserved bits, found {flags:#04x}"
        ));
    }
    let mut at = 10;
    if flags & 4 != 0 {
        let Some(len) = h.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    // FNAME, then FCOMMENT: each ends with a zero byte.
    for flag in [8, 16] {
        if flags & flag != 0 {
            let Some(end) = h.get(at..).and_then(|r| r.iter().position(|b| *b == 0)) else {
                return Ok(None);
            };
            at += end + 1;
        }
    }
    if flags & 2 != 0 {
        let Some(crc16) = h.get(at..at + 2) else {
            return Ok(None);
        };
        let expected = crc32fast::hash(&h[..at]) as u16;
        let found = u16::from_le_bytes([crc16[0], crc16[1]]);
        if found != expected {
            return Err(format!(
                "expected the gzip header's CRC16 {expected:04x}, found {found:04x}"
            ));
        }
        at += 2;
    }
    Ok((h.len() >= at).then_some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Inflates `gz` fed `piece` bytes at a time: the output, or the first problem.
    fn inflate(gz: &[u8], piece: usize) -> std::result::Result<Vec<u8>, String> {
        let mut inflater = Inflater::new();
        let mut out = Vec::new();
        for mut chunk in gz.chunks(piece) {
            loop {
                let made = inflater.inflate(&mut chunk)?;
                if made.is_empty() {
                    break;
                }
                out.extend_from_slice(made);
            }
        }
        let len = inflater.finish()?;
        assert_eq!(len, out.len() as u64);
        Ok(out)
    }

    fn data() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i / 7).to_le_bytes())
            .collect()
    }

    #[test]
    fn a_member_inflates_whatever_the_pieces_it_comes_in() {
        let data = data();
        let gz = gzip(&data);
        for piece in [1, 7, 4096, gz.len()] {
            assert_eq!(inflate(&gz, piece).unwrap(), data, "pieces of {piece}");
        }
    }

    #[test]
    fn every_optional_header_field_is_skipped() {
        let data = b"rootfs".repeat(1000);
        let gz = gzip(&data);
        let mut header = vec![0x1f, 0x8b, 8, 4 | 8 | 16 | 2, 0, 0, 0, 0, 0, 3];
        header.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        header.extend_from_slice(b"rootfs.ext4\0a comment\0");
        let crc = crc32fast::hash(&header) as u16;
        header.extend_from_slice(&crc.to_le_bytes());
        let mut full = header.clone();
        full.extend_from_slice(&gz[10..]);
        assert_eq!(inflate(&full, 3).unwrap(), data);
        full[header.len() - 1] ^= 1;
        let err = inflate(&full, 3).unwrap_err();
        assert!(err.contains("CRC16"), "{err}");
    }

    /// A gzip member whose header (an FNAME) is `header_len` bytes long.
    fn with_header_of(header_len: usize, data: &[u8]) -> Vec<u8> {
        let mut gz = vec![0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 3];
        gz.resize(header_len - 1, b'n');
        gz.push(0);
        gz.extend_from_slice(&gzip(data)[10..]);
        gz
    }

    #[test]
    fn a_long_header_is_judged_on_its_length_whatever_the_pieces_it_comes_in() {
        let data = b"payload".repeat(100);
        let longest = with_header_of(MAX_HEADER, &data);
        let longer = with_header_of(MAX_HEADER + 1, &data);
        for piece in [4093, 10 << 10, 64 << 10, 1 << 20] {
            assert_eq!(inflate(&longest, piece).unwrap(), data, "pieces of {piece}");
            let err = inflate(&longer, piece).unwrap_err();
            assert!(
                err.contains(&format!("a gzip header of at most {MAX_HEADER} bytes")),
                "pieces of {piece}: {err}"
            );
        }
    }

    /// What follows the deflate data is judged by `finish` alone: a download takes all of
    /// a blob in before its hash says whether a wrong end is the blob's or a server's.
    #[test]
    fn a_wrong_end_is_said_when_the_member_is_finished() {
        let gz = gzip(&data());
        let mut bad_crc = gz.clone();
        bad_crc[gz.len() - 8] ^= 1;
        for (bad, expected) in [
            (bad_crc, "CRC32"),
            ([gz.clone(), b"junk".to_vec()].concat(), "trailing bytes"),
            ([gz.clone(), gz.clone()].concat(), "another gzip member"),
        ] {
            let mut inflater = Inflater::new();
            let mut input = &bad[..];
            while !inflater.inflate(&mut input).unwrap().is_empty() || !input.is_empty() {}
            let err = inflater.finish().unwrap_err();
            assert!(err.contains(expected), "{err}\nwanted: {expected}");
        }
    }

    /// What a member inflates to, and the verdict on it, word for word, do not depend on
    /// how its bytes are cut into pieces, whatever is wrong with it (the property the
    /// `gzip_inflate` fuzz target checks, on inputs it found).
    #[test]
    fn the_output_and_the_verdict_do_not_depend_on_the_pieces() {
        let data = data();
        let gz = gzip(&data);
        let mut flipped = gz.clone();
        for b in &mut flipped[gz.len() / 3..gz.len() / 3 + 4] {
            *b = !*b;
        }
        // A stored block of 5 bytes, then a block of the reserved type 3.
        let mut stored = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        stored.extend_from_slice(&[0, 5, 0, 0xfa, 0xff, b'h', b'e', b'l', b'l', b'o', 0x07]);
        let mut bad_crc = gz.clone();
        bad_crc[gz.len() - 8] ^= 1;
        let cases = [
            b"AB".to_vec(),
            b"ABC".to_vec(),
            vec![0x1f, 0, 0],
            vec![0; 4],
            flipped,
            stored,
            bad_crc,
            [gz.clone(), b"junk".to_vec()].concat(),
            gz[..gz.len() / 2].to_vec(),
            gz,
        ];
        let run = |gz: &[u8], piece: usize| {
            let mut out = Vec::new();
            let verdict = fuzz_inflate(gz, piece, &mut |made| {
                out.extend_from_slice(made);
                true
            });
            (verdict, out)
        };
        for (i, case) in cases.iter().enumerate() {
            let whole = run(case, usize::MAX);
            for piece in [1, 2, 7, 64, 512, 4096, 65536] {
                assert!(
                    run(case, piece) == whole,
                    "case {i}, pieces of {piece}: {:?}",
                    whole.0
                );
            }
        }
    }

    #[test]
    fn damaged_cut_or_extended_members_are_refused_by_what_is_wrong() {
        let data = data();
        let gz = gzip(&data);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                gz[..gz.len() - 3].to_vec(),
                "cut short in its 8-byte trailer",
            ),
            (gz[..gz.len() / 2].to_vec(), "cut short in its deflate data"),
            (gz[..5].to_vec(), "cut short in its header"),
            ([gz.clone(), gz.clone()].concat(), "another gzip member"),
            ([gz.clone(), b"junk".to_vec()].concat(), "trailing bytes"),
            (
                {
                    let mut g = gz.clone();
                    let n = g.len();
                    g[n - 8] ^= 1;
                    g
                },
                "CRC32",
            ),
            (
                {
                    let mut g = gz.clone();
                    let n = g.len();
                    g[n - 1] ^= 1;
                    g
                },
                "ISIZE",
            ),
            (b"BZh91AY&SY".to_vec(), "expected gzip data"),
        ];
        for (bad, expected) in cases {
            let err = inflate(&bad, 1000).unwrap_err();
            assert!(err.contains(expected), "{err}\nwanted: {expected}");
        }
    }
}
