//! Root rotation: a new root version signed by the old root's threshold and its own.

use super::*;

impl Repo {
    /// Writes the next root, signed by a threshold of the current root keys *and* of the
    /// new ones (`signers` holds both), after checking it as a client would. When the
    /// manifest keys or the root keys change (not a renewal), every channel is re-signed
    /// with the new manifest keys (new sequence, and the channel's validity unless
    /// `opts.manifest_expires_in_days`): devices walk to a new root only when a channel
    /// changed. A root document
    /// outside the chain (past a gap) is refused first: the new root would take its
    /// place in the chain ahead of it. Nothing is written unless every
    /// document could be signed and written: all are made durable under temp names before
    /// any is renamed into place, the root last. A run cut off between the renames can be
    /// run again: channels already signed by the new keys are taken as they are.
    pub fn rotate(
        &self,
        opts: &RotateOptions,
        signers: &[&SecretKey],
        now: Timestamp,
    ) -> Result<Rotation> {
        let _lock = self.lock()?;
        let current = self.trusted_root()?;
        self.check_root_files(current.root().version)?;
        let doc = current.root();
        let old_root_keys = doc.role_keys("root")?;
        let root_keys = merge_keys(&old_root_keys, &opts.root_keys, opts.root_threshold)
            .map_err(|e| e.context("new root role"))?;
        let manifest_keys = merge_keys(
            current.manifest_keys(),
            &opts.manifest_keys,
            opts.manifest_threshold,
        )
        .map_err(|e| e.context("new manifest role"))?;
        let days = opts.expires_in_days.unwrap_or(DEFAULT_ROOT_DAYS);
        let next_doc = root_document(
            &doc.product,
            doc.version + 1,
            expiry(now, days)?,
            &root_keys,
            &manifest_keys,
        );
        let envelope = sign(
            trust::ROOT_TYPE,
            &next_doc.to_bytes(),
            &[("current root", &old_root_keys), ("new root", &root_keys)],
            signers,
        )?;
        let next = current.rotate(&envelope, DEFAULT_MAX_METADATA_BYTES)?;
        let mut files = Vec::new();
        let mut channels = Vec::new();
        // Devices drop the newest `issued` they saw when a manifest key is revoked (DESIGN
        // §5.1 rule 7): that is how a channel once signed with a clock far ahead is undone,
        // so such a rotation may re-sign at a clock behind the channel's last `issued`.
        let revokes = !current
            .manifest_keys()
            .keys()
            .iter()
            .all(|k| next.manifest_keys().keys().contains(k));
        // A device walks to a new root only when a channel changed (a 304 walks nothing):
        // a root key revoked, or a threshold raised, with no channel re-signed would leave
        // the old root's signers counting, for a thief on the device's path, until the
        // old root expires. A renewal (the same keys) changes nothing to walk for.
        if !same_keys(&old_root_keys, next.root_keys())
            || !same_keys(current.manifest_keys(), next.manifest_keys())
        {
            if revokes {
                self.check_kept_clock(&next, now)?;
            }
            for channel in self.channel_names()? {
                // A channel already signed by the new keys is what an interrupted run of
                // this same rotation left: the new root vouches for it as much.
                let loaded = self
                    .load_channel(&current, &channel)
                    .or_else(|e| self.load_channel(&next, &channel).map_err(|_| e))?;
                let mut m = loaded.ok_or_else(|| missing(&channel))?;
                if !revokes {
                    check_clock(&m, now)?;
                }
                reissue(&mut m, now, opts.manifest_expires_in_days)?;
                let bytes = self.seal_manifest(&next, &m, signers, now).map_err(|e| {
                    e.context(format!(
                        "re-signing channel {channel}, so that devices walk to the new root (give its manifest key(s) with --sign)"
                    ))
                })?;
                files.push((self.channel_path(&channel), bytes));
                channels.push(m);
            }
        }
        // The root goes in last: until it is there, the repository is the old one.
        files.push((self.root_path(next.root().version), envelope));
        fsutil::write_all_atomic(&files)?;
        Ok(Rotation {
            root: next,
            channels,
        })
    }
}

impl Repo {
    /// Refuses a rotation that revokes a manifest key while a channel still signed by a
    /// threshold of the new keys was issued after `now`: devices keep that channel's
    /// record, and the `issued` it pulled their clock up to (DESIGN §5.1 rule 7), so every
    /// channel re-signed at `now` could be expired to them already, the whole fleet locked
    /// out with nothing said. Only rotating out every key that signed it undoes it.
    fn check_kept_clock(&self, next: &TrustedRoot, now: Timestamp) -> Result<()> {
        for channel in self.channel_names()? {
            // One the new keys do not verify is dropped by devices, its `issued` with it.
            let Ok(Some(m)) = self.load_channel(next, &channel) else {
                continue;
            };
            if now < m.issued {
                return Err(Error::config(format!(
                    "channel {channel}: expected a clock at or after its last issued {}, found {now}; keys the new root keeps for manifests still sign it, so devices keep that issued as their clock (DESIGN §5.1 rule 7) and every channel re-signed now could be expired to them: rotate out every key that signed it, or fix the clock",
                    m.issued
                )));
            }
        }
        Ok(())
    }
}

pub(super) fn root_document(
    product: &str,
    version: u64,
    expires: Timestamp,
    root_keys: &KeySet,
    manifest_keys: &KeySet,
) -> Root {
    let mut keys = NameMap::new();
    let mut role = |set: &KeySet| {
        let mut keyids = Vec::new();
        for k in set.keys() {
            keys.insert(
                k.keyid(),
                RootKey {
                    alg: "ed25519".to_string(),
                    public: k.to_base64(),
                },
            );
            keyids.push(k.keyid());
        }
        Role {
            keyids,
            threshold: set.threshold(),
        }
    };
    let roles = NameMap::from([("root", role(root_keys)), ("manifest", role(manifest_keys))]);
    Root {
        doc_type: "root".to_string(),
        product: product.to_string(),
        version,
        expires,
        keys,
        roles,
    }
}

/// The current key set with the given replacements.
fn merge_keys(
    current: &KeySet,
    keys: &Option<Vec<PublicKey>>,
    threshold: Option<usize>,
) -> Result<KeySet> {
    let keys = keys.clone().unwrap_or_else(|| current.keys().to_vec());
    KeySet::new(keys, threshold.unwrap_or(current.threshold()))
}

fn same_keys(a: &KeySet, b: &KeySet) -> bool {
    let ids = |s: &KeySet| {
        let mut v: Vec<String> = s.keys().iter().map(PublicKey::keyid).collect();
        v.sort();
        v
    };
    a.threshold() == b.threshold() && ids(a) == ids(b)
}
