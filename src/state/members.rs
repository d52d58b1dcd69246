//! A set's members, compactly: their texts end to end, and where each
//! ends. A `Vec<String>` takes a heap block and 24 bytes of its own for
//! each member (56 bytes for `10.1.134.160`); this takes the text and 8
//! bytes (20). A 1,000,000-member blocklist is held in 23 MB, not 56, in
//! the wishes, in what is read from the kernel, and in a plan's run of
//! member commands.

use std::fmt;

/// A list of members (texts), in order; see the module's text.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Members {
    text: String,
    ends: Vec<usize>,
}

impl Members {
    pub fn new() -> Members {
        Members::default()
    }

    /// Room for `members` members of `bytes` bytes in all.
    pub fn with_capacity(members: usize, bytes: usize) -> Members {
        Members {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(members),
        }
    }

    pub fn push(&mut self, member: &str) {
        self.text.push_str(member);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of all the members' texts.
    pub fn bytes(&self) -> usize {
        self.text.len()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(before) => self.ends[before],
            None => 0,
        };
        self.text.get(start..end)
    }

    pub fn first(&self) -> Option<&str> {
        self.get(0)
    }

    pub fn last(&self) -> Option<&str> {
        self.get(self.len().checked_sub(1)?)
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            members: self,
            next: 0,
            end: self.len(),
        }
    }

    pub fn contains(&self, member: &str) -> bool {
        self.iter().any(|m| m == member)
    }

    /// Drops the members `keep` says no to, keeping the others' order.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let mut out = Members::with_capacity(self.len(), self.text.len());
        for m in self.iter() {
            if keep(m) {
                out.push(m);
            }
        }
        *self = out;
    }

    /// Frees the room reserved beyond what the members take.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

/// The members of a [`Members`], in order.
#[derive(Clone)]
pub struct Iter<'a> {
    members: &'a Members,
    next: usize,
    end: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.next >= self.end {
            return None;
        }
        self.next += 1;
        self.members.get(self.next - 1)
    }

    /// Skips `n` members at once (so `skip` costs nothing).
    fn nth(&mut self, n: usize) -> Option<&'a str> {
        self.next = self.next.saturating_add(n).min(self.end);
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.next;
        (left, Some(left))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        self.end -= 1;
        self.members.get(self.end)
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Members {
    type Item = &'a str;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl std::ops::Index<usize> for Members {
    type Output = str;

    /// Panics when out of range, as a slice's index does.
    fn index(&self, i: usize) -> &str {
        match self.get(i) {
            Some(member) => member,
            None => panic!("member {i} of {}", self.len()),
        }
    }
}

impl<'a> FromIterator<&'a str> for Members {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Members {
        let mut out = Members::new();
        out.extend(iter);
        out
    }
}

impl<'a> FromIterator<&'a String> for Members {
    fn from_iter<I: IntoIterator<Item = &'a String>>(iter: I) -> Members {
        iter.into_iter().map(String::as_str).collect()
    }
}

impl FromIterator<String> for Members {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Members {
        let mut out = Members::new();
        for m in iter {
            out.push(&m);
        }
        out
    }
}

impl<'a> Extend<&'a str> for Members {
    fn extend<I: IntoIterator<Item = &'a str>>(&mut self, iter: I) {
        for m in iter {
            self.push(m);
        }
    }
}

impl fmt::Debug for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Members {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<const N: usize> PartialEq<[&str; N]> for Members {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.len() == N && self.iter().zip(other).all(|(a, b)| a == *b)
    }
}

impl PartialEq<Vec<&str>> for Members {
    fn eq(&self, other: &Vec<&str>) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == *b)
    }
}

impl PartialEq<Vec<String>> for Members {
    fn eq(&self, other: &Vec<String>) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_texts_and_order() {
        let mut m: Members = ["10.0.0.1", "", "10.0.0.2 comment \"a b\""]
            .into_iter()
            .collect();
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(1), Some(""));
        assert_eq!(&m[2], "10.0.0.2 comment \"a b\"");
        assert_eq!(m.get(3), None);
        assert_eq!(
            (m.first(), m.last()),
            (Some("10.0.0.1"), Some("10.0.0.2 comment \"a b\""))
        );
        assert_eq!(m.iter().next_back(), Some("10.0.0.2 comment \"a b\""));
        assert_eq!(m.iter().len(), 3);
        assert!(m.contains("") && !m.contains("10.0.0.3"));
        m.retain(|x| !x.is_empty());
        assert_eq!(m, ["10.0.0.1", "10.0.0.2 comment \"a b\""]);
        assert_eq!(
            format!("{m:?}"),
            r#"["10.0.0.1", "10.0.0.2 comment \"a b\""]"#
        );
        assert!(Members::new().is_empty() && Members::new().last().is_none());
    }
}
