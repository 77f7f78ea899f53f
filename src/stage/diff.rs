//! The component diff shown before approval: Added / Removed / Modified / Unchanged.

use crate::manifest::{Artifact, ArtifactKind, Component, Compression, TargetRelease};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A component as installed in a slot (what the state records).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InstalledComponent {
    /// The component's version string.
    pub version: String,
    /// Lowercase hex SHA-256 of the artifact it was installed from.
    pub sha256: String,
    /// How that artifact was installed (extracted, placed as a file, written as an image).
    /// None in a state written before it was recorded: such a component is never
    /// `unchanged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ArtifactKind>,
    /// The artifact's `name`: for a `file` artifact, the file in the component directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The image's `compression`: the same blob inflated into the slot or written as it
    /// is leaves different bytes there. None for an uncompressed artifact (and in a state
    /// written before it was recorded, where a compressed image is then not `unchanged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

impl InstalledComponent {
    /// The record of a component installed, as `version`, from `artifact`.
    pub fn new(version: String, artifact: &Artifact) -> InstalledComponent {
        InstalledComponent {
            version,
            sha256: artifact.sha256.clone(),
            kind: Some(artifact.kind),
            name: artifact.name.clone(),
            compression: artifact.compression,
        }
    }

    /// Whether installing `artifact` gives what this component holds: the same bytes,
    /// installed the same way (its kind, a file artifact's name, an image's compression).
    pub fn holds(&self, artifact: &Artifact) -> bool {
        self.sha256 == artifact.sha256
            && self.kind == Some(artifact.kind)
            && self.name == artifact.name
            && self.compression == artifact.compression
    }
}

/// What an update does to one component.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ComponentOp {
    /// New in this release: installed from its artifact.
    Added,
    /// Gone from this release: absent from the new slot.
    Removed,
    /// A different artifact (or version): installed from its artifact.
    Modified,
    /// The same artifact, installed the same way: nothing downloaded. On dir slots it is
    /// installed from the download kept since the primary slot was installed from it
    /// (checked against its SHA-256 again), never copied from the slot the app can write;
    /// where nothing is kept (image slots; a download removed) it carries its artifact
    /// and is downloaded again.
    Unchanged,
}

impl ComponentOp {
    /// `"added"`, `"removed"`, `"modified"` or `"unchanged"`, as `--json` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentOp::Added => "added",
            ComponentOp::Removed => "removed",
            ComponentOp::Modified => "modified",
            ComponentOp::Unchanged => "unchanged",
        }
    }
}

/// One line of the diff. Serialises as `{"name", "op", "from", "to"}` (DESIGN §7.2).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ComponentChange {
    /// Component name (its directory in the slot).
    pub name: String,
    /// What happens to it.
    pub op: ComponentOp,
    /// The installed version, if any.
    pub from: Option<String>,
    /// The release's version, if the component is in the release.
    pub to: Option<String>,
    /// The artifact to download and install: set for Added and Modified, and for
    /// Unchanged when no download of it is kept (image slots; and, set by the updater, a
    /// dir slot's download removed), so "what must be fetched" is the changes that carry
    /// one.
    #[serde(skip)]
    pub artifact: Option<Artifact>,
}

/// Compares what is installed with what the release holds for this target, by name
/// (sorted). Unchanged means the installed component [holds](InstalledComponent::holds)
/// the release's artifact (same sha256, kind and file name); anything else is Modified. With `kept` false (image
/// slots, which keep no downloads) an Unchanged component still carries its artifact, to
/// be downloaded and written again.
///
/// ```
/// use evergreen::stage::{diff, ComponentOp};
/// use evergreen::manifest::TargetRelease;
/// let target: TargetRelease = serde_json::from_str(r#"{"components": {"app": {"version": "2",
///     "artifact": {"kind": "file", "name": "app", "sha256": "00000000000000000000000000000000000000000000000000000000000000aa", "size": 1}}}}"#).unwrap();
/// let changes = diff(&Default::default(), &target, true);
/// assert_eq!(changes[0].op, ComponentOp::Added);
/// assert!(changes[0].artifact.is_some());
/// ```
pub fn diff(
    installed: &BTreeMap<String, InstalledComponent>,
    target: &TargetRelease,
    kept: bool,
) -> Vec<ComponentChange> {
    let mut names: Vec<&String> = installed.keys().chain(target.components.keys()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| change(name, installed.get(name), target.components.get(name), kept))
        .collect()
}

fn change(
    name: &str,
    old: Option<&InstalledComponent>,
    new: Option<&Component>,
    kept: bool,
) -> ComponentChange {
    let op = match (old, new) {
        (None, _) => ComponentOp::Added,
        (Some(_), None) => ComponentOp::Removed,
        // What gets installed decides: the same bytes installed the same way are
        // unchanged (installed from the kept download, nothing fetched) even if the
        // publisher renamed the version. A file
        // renamed, or a blob that was placed and is now extracted, is installed again.
        (Some(o), Some(n)) if o.holds(&n.artifact) => ComponentOp::Unchanged,
        (Some(_), Some(_)) => ComponentOp::Modified,
    };
    let needs_artifact = match op {
        ComponentOp::Added | ComponentOp::Modified => true,
        ComponentOp::Unchanged => !kept,
        ComponentOp::Removed => false,
    };
    ComponentChange {
        name: name.to_string(),
        op,
        from: old.map(|o| o.version.clone()),
        to: new.map(|n| n.version.clone()),
        artifact: new.filter(|_| needs_artifact).map(|n| n.artifact.clone()),
    }
}
