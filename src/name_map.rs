//! [`NameMap`]: the map type of signed documents, names to values, each name once.
//!
//! Manifests and roots name their targets, components, keys and roles in JSON objects.
//! Two things matter for those objects:
//!
//! - **A name must not appear twice.** serde keeps the last duplicate silently while other
//!   JSON parsers keep the first, so a signer's tool and a device could read one signed
//!   document two ways (a key swapped in a role, a component replaced). Reading a
//!   `NameMap` refuses a repeated name.
//! - **Most of them hold one or two entries, and a manifest holds thousands of them.** A
//!   `BTreeMap` allocates a node with room for eleven entries for the first one: 2.7 MB of
//!   heap to parse a 1,000-release manifest of 335 KiB, and most of the parse time went to
//!   faulting those pages in. A sorted `Vec` sized to its entries took 0.65 MB and half
//!   the time.
//!
//! Entries are kept sorted by name, so iteration order and the serialized JSON are those
//! of a `BTreeMap<String, V>`: signed bytes do not change.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;

/// Names to values, sorted by name, each name once.
///
/// ```
/// use evergreen::NameMap;
/// let mut m = NameMap::from([("b", 2), ("a", 1)]);
/// m.insert("c", 3);
/// assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c"]);
/// assert_eq!(m["b"], 2);
///
/// // Read from JSON, a repeated name is refused.
/// let err = serde_json::from_str::<NameMap<u32>>(r#"{"a": 1, "a": 2}"#).unwrap_err();
/// assert!(err.to_string().contains("found \"a\" twice"), "{err}");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct NameMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> NameMap<V> {
    /// An empty map; it allocates nothing until the first insert.
    pub fn new() -> Self {
        NameMap {
            entries: Vec::new(),
        }
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    /// Sets `name` to `value`, returning the value it replaced.
    pub fn insert(&mut self, name: impl Into<String>, value: V) -> Option<V> {
        let name = name.into();
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (name, value));
                None
            }
        }
    }

    /// The value named `name`.
    pub fn get(&self, name: &str) -> Option<&V> {
        self.position(name).ok().map(|i| &self.entries[i].1)
    }

    /// The value named `name`, to change it.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.position(name).ok().map(|i| &mut self.entries[i].1)
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<V> {
        self.position(name).ok().map(|i| self.entries.remove(i).1)
    }

    /// Whether `name` is in the map.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in name order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            inner: self.entries.iter(),
        }
    }

    /// Names in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Values in name order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for NameMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> std::ops::Index<&str> for NameMap<V> {
    type Output = V;

    /// The value named `name`; panics when there is none, like `BTreeMap`'s index.
    fn index(&self, name: &str) -> &V {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no entry named {name:?}"),
        }
    }
}

impl<K: Into<String>, V> FromIterator<(K, V)> for NameMap<V> {
    /// Later entries replace earlier ones with the same name, as `insert` does.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut map = NameMap::new();
        for (k, v) in items {
            map.insert(k, v);
        }
        map
    }
}

impl<K: Into<String>, V, const N: usize> From<[(K, V); N]> for NameMap<V> {
    fn from(items: [(K, V); N]) -> Self {
        items.into_iter().collect()
    }
}

/// Borrowing iterator over a [`NameMap`], in name order.
pub struct Iter<'a, V> {
    inner: std::slice::Iter<'a, (String, V)>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a String, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(k, v)| (k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<'a, V> IntoIterator for &'a NameMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<V> IntoIterator for NameMap<V> {
    type Item = (String, V);
    type IntoIter = std::vec::IntoIter<(String, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<V: Serialize> Serialize for NameMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NameMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(NameMapVisitor(PhantomData))
    }
}

struct NameMapVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for NameMapVisitor<V> {
    type Value = NameMap<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object whose keys are all different")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<NameMap<V>, A::Error> {
        // JSON gives no length; one entry is by far the most common case, and growing
        // from one costs a single reallocation for the rest.
        let mut entries: Vec<(String, V)> = Vec::with_capacity(access.size_hint().unwrap_or(1));
        while let Some((key, value)) = access.next_entry::<String, V>()? {
            // Publishers write names in order, so the common case appends.
            let at = match entries.last() {
                Some((last, _)) if *last < key => entries.len(),
                None => 0,
                Some(_) => match entries.binary_search_by(|(k, _)| k.cmp(&key)) {
                    Ok(_) => {
                        return Err(serde::de::Error::custom(format_args!(
                            "expected each key once, found {key:?} twice"
                        )))
                    }
                    Err(i) => i,
                },
            };
            entries.insert(at, (key, value));
        }
        Ok(NameMap { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_any_order_and_writes_sorted_like_a_btreemap() {
        let json = r#"{"zeta":1,"alpha":2,"mid":3,"beta":4}"#;
        let m: NameMap<u32> = serde_json::from_str(json).unwrap();
        let b: std::collections::BTreeMap<String, u32> = serde_json::from_str(json).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(m.len(), 4);
        assert_eq!(m.get("mid"), Some(&3));
        assert_eq!(m.get("nope"), None);
    }

    #[test]
    fn refuses_a_repeated_key_wherever_it_comes() {
        for json in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"b":1,"a":2,"b":3}"#,
        ] {
            let err = serde_json::from_str::<NameMap<u32>>(json).unwrap_err();
            assert!(err.to_string().contains("twice"), "{json}: {err}");
        }
        let err = serde_json::from_str::<NameMap<u32>>("[1]").unwrap_err();
        assert!(
            err.to_string()
                .contains("an object whose keys are all different"),
            "{err}"
        );
    }

    #[test]
    fn edits_keep_order_and_replace() {
        let mut m: NameMap<&str> = NameMap::new();
        assert!(m.is_empty());
        assert_eq!(m.insert("b", "1"), None);
        assert_eq!(m.insert("a", "2"), None);
        assert_eq!(m.insert("b", "3"), Some("1"));
        *m.get_mut("a").unwrap() = "4";
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [(&"a".into(), &"4"), (&"b".into(), &"3")]
        );
        assert_eq!(m.remove("a"), Some("4"));
        assert_eq!(m.remove("a"), None);
        assert!(m.contains_key("b") && !m.contains_key("a"));
        assert_eq!(format!("{m:?}"), r#"{"b": "3"}"#);
        assert_eq!(m.into_iter().collect::<Vec<_>>(), [("b".to_string(), "3")]);
    }
}
