//! Key files: an ed25519 secret key and its `.pub`, written and read.

use super::*;

/// Writes a new key pair: `path` holds the base64 secret seed (mode 0600 from creation,
/// never widened afterwards) and `path.pub` the base64 public key. Refuses to overwrite
/// either file, and a `path` ending in `.pub`.
pub fn write_keypair(path: &Path) -> Result<PublicKey> {
    // `keygen --out keys` (the file name left off) or `--out keys/`: no file to write, and
    // a directory is no key file a cut-off keygen left, to be removed.
    let slash = path.as_os_str().as_encoded_bytes().ends_with(b"/");
    if slash || path.file_name().is_none() || path.is_dir() {
        return Err(Error::config(format!(
            "expected a file name for the secret key (its public half gets .pub added), found the directory {} (name a file in it: DIR/NAME)",
            path.display()
        )));
    }
    // `keygen --out x.pub` would put the secret where public keys are read from (and
    // published in the root by `init`).
    if path.extension().is_some_and(|e| e == "pub") {
        return Err(Error::config(format!(
            "expected a secret key file name (its public half gets .pub added), found {} ending in .pub",
            path.display()
        )));
    }
    // `keygen --out keys/root` as the examples write it: a missing directory is made,
    // readable by its owner only.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
    }
    let public_path = public_key_path(path);
    if public_path.exists() {
        return Err(overwrite(&public_path));
    }
    // The secret is written first: one without its public half is most likely a keygen
    // cut off before it finished (or a power cut that left it empty), which says more
    // than "already there".
    if path.symlink_metadata().is_ok() {
        return Err(Error::config(format!(
            "expected a new key file, found {} already there without its public half {} (a keygen cut off before it finished?); refusing to overwrite it: remove it and run keygen again",
            path.display(),
            public_path.display()
        )));
    }
    let secret = SecretKey::generate()?;
    write_new(path, &secret.to_base64(), 0o600)?;
    if let Err(e) = write_new(&public_path, &secret.public().to_base64(), 0o644) {
        // Without its public half the key is unusable for `init`; let the operator retry.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    fsutil::sync_parent(path)?;
    Ok(secret.public())
}

/// `KEYFILE.pub` for `KEYFILE`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

fn overwrite(path: &Path) -> Error {
    Error::config(format!(
        "expected a new key file, found {} already there; refusing to overwrite it",
        path.display()
    ))
}

/// Creates `path` (which must not exist) with `mode` and writes `line` and a newline.
fn write_new(path: &Path, line: &str, mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => overwrite(path),
        _ => Error::io("create", path, e),
    })?;
    file.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| fsutil::sync_file(&file))
        .map_err(|e| Error::io("write", path, e))
}

/// Reads a secret key file written by [`write_keypair`]. A `.pub` file is refused: it has
/// the same shape, and signing with a public key only fails later, as a confusing
/// threshold error.
pub fn read_secret_key(path: &Path) -> Result<SecretKey> {
    if path.extension().is_some_and(|e| e == "pub") {
        return Err(Error::config(format!(
            "expected a secret key file to sign with, found {}, a public key (drop the .pub)",
            path.display()
        )));
    }
    let seed = read_key_file(path, "secret key (one line, as keygen writes it)")?;
    Ok(SecretKey::from_seed(&seed))
}

/// The 32 bytes of the key file at `path` ([`key_bytes`]), or a `config` error naming
/// the file, `what` was expected and what it holds instead.
fn read_key_file(path: &Path, what: &str) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read key file", path, e))?;
    key_bytes(&bytes).map_err(|found| {
        Error::config(format!(
            "expected a base64 32-byte ed25519 {what}, found {found}"
        ))
        .context(path.display())
    })
}

/// The 32 bytes a key file holds (base64, blanks and line ends around it ignored), or what
/// the file holds instead, said without its bytes: an error ends up in CI logs, a damaged
/// secret key is still most of a key, and a `.pub` file may hold a secret by mistake.
fn key_bytes(bytes: &[u8]) -> std::result::Result<[u8; 32], String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(format!("{} bytes that are not text", bytes.len()));
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(if bytes.is_empty() {
            "an empty file".to_string()
        } else {
            "a file of blanks only".to_string()
        });
    }
    if text.starts_with("-----BEGIN") {
        return Err("a PEM file, of another tool".to_string());
    }
    let Some(seed) = trust::decode_base64(text) else {
        let lines = text.lines().count();
        return Err(if lines > 1 {
            format!("{lines} lines of text that are not base64")
        } else {
            format!("{} characters that are not base64", text.chars().count())
        });
    };
    let len = seed.len();
    seed.try_into()
        .map_err(|_| format!("{len} bytes of base64 (a key cut short, or not a key)"))
}

/// A warning when the secret key file at `path` is a regular file its group or others may
/// read or write (mode bits 0o077), as one written by `echo "$KEY" > key` under the usual
/// umask 022 is: anyone who can read it can sign. `None` for a file only its owner may use,
/// for what is not a regular file (a pipe: `--sign /dev/stdin`, `--sign <(…)`), and off Unix.
/// The warning names the file, its mode and the fix; never the key.
pub fn secret_key_exposure(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).ok()?;
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_file() || mode & 0o077 == 0 {
            return None;
        }
        let shown = path.display();
        Some(format!(
            "secret key file {shown} has mode {mode:04o}, expected 0600: its group or other users may read it, and whoever reads it can sign; run chmod 600 {shown} (in CI, write it under umask 077)"
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Reads a public key file (`KEYFILE.pub`). Only `.pub` files are accepted: a secret key
/// file has the same shape, and taking it for a public key would publish the secret.
pub fn read_public_key(path: &Path) -> Result<PublicKey> {
    if path.extension().is_none_or(|e| e != "pub") {
        return Err(Error::config(format!(
            "expected a public key file ending in .pub, found {}",
            path.display()
        )));
    }
    let raw = read_key_file(path, "public key (one line, as keygen writes KEYFILE.pub)")?;
    PublicKey::from_bytes(&raw).map_err(|e| e.context(path.display()))
}
