//! Classes as files write them (integers or strings) and the class order every input is
//! indexed by.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// A class as written in a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClassValue {
    Int(i64),
    Text(String),
}

impl fmt::Display for ClassValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassValue::Int(v) => write!(f, "{v}"),
            ClassValue::Text(v) => f.write_str(v),
        }
    }
}

/// Why a class order cannot be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassOrderError {
    #[error("the class list names '{0}' twice")]
    Repeated(String),
    #[error("class {0} is negative; integer classes are 0..K-1")]
    Negative(i64),
    #[error(
        "class-order mismatch: the probability sources have {width} classes but {found} classes \
         were found ({preview})"
    )]
    Width {
        width: usize,
        found: usize,
        preview: String,
    },
    #[error("need at least 2 classes, found {found} ({preview})")]
    TooFew { found: usize, preview: String },
}

/// The class order: names, and whether classes are written as integers.
#[derive(Debug, Clone)]
pub struct Classes {
    pub names: Vec<String>,
    pub integer: bool,
    index: HashMap<ClassValue, usize>,
}

impl Classes {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Settle the order from the names given, else 0..K-1 (integers) or the sorted union of
    /// the names seen (strings); `width` is the probability sources' class count.
    pub(crate) fn settle(
        given: Option<&[String]>,
        seen: &BTreeSet<ClassValue>,
        width: Option<usize>,
    ) -> Result<Classes, ClassOrderError> {
        let integer = seen.iter().all(|v| matches!(v, ClassValue::Int(_)));
        let names: Vec<String> = match given {
            Some(names) => {
                let mut unique = BTreeSet::new();
                for name in names {
                    if !unique.insert(name) {
                        return Err(ClassOrderError::Repeated(name.clone()));
                    }
                }
                names.to_vec()
            }
            None if integer => {
                if let Some(ClassValue::Int(low)) = seen.iter().next()
                    && *low < 0
                {
                    return Err(ClassOrderError::Negative(*low));
                }
                let top = seen
                    .iter()
                    .filter_map(|v| match v {
                        ClassValue::Int(k) => Some(*k as usize + 1),
                        ClassValue::Text(_) => None,
                    })
                    .max()
                    .unwrap_or(0);
                let k = width.unwrap_or(top).max(top);
                (0..k).map(|k| k.to_string()).collect()
            }
            None => seen.iter().map(ClassValue::to_string).collect(),
        };
        if let Some(width) = width
            && width != names.len()
        {
            return Err(ClassOrderError::Width {
                width,
                found: names.len(),
                preview: preview(&names),
            });
        }
        if names.len() < 2 {
            return Err(ClassOrderError::TooFew {
                found: names.len(),
                preview: preview(&names),
            });
        }
        let named = given.is_some();
        let index = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let key = if integer && !named {
                    ClassValue::Int(k as i64)
                } else {
                    ClassValue::Text(name.clone())
                };
                (key, k)
            })
            .collect();
        Ok(Classes {
            names,
            integer: integer && !named,
            index,
        })
    }

    /// The class index of a value (integers match names by their digits when the names were
    /// given).
    pub(crate) fn lookup(&self, value: &ClassValue) -> Option<usize> {
        match (value, self.integer) {
            (ClassValue::Int(_), true) | (ClassValue::Text(_), false) => {
                self.index.get(value).copied()
            }
            (ClassValue::Int(v), false) => {
                self.index.get(&ClassValue::Text(v.to_string())).copied()
            }
            (ClassValue::Text(_), true) => None,
        }
    }

    /// The first eight names, for messages.
    pub fn preview(&self) -> String {
        preview(&self.names)
    }
}

fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    let more = if names.len() > 8 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(values: &[ClassValue]) -> BTreeSet<ClassValue> {
        values.iter().cloned().collect()
    }

    #[test]
    fn integer_classes_run_from_zero_to_the_widest_source() {
        let classes = Classes::settle(
            None,
            &seen(&[ClassValue::Int(0), ClassValue::Int(2)]),
            Some(4),
        )
        .unwrap();
        assert_eq!(classes.names, ["0", "1", "2", "3"]);
        assert_eq!(classes.lookup(&ClassValue::Int(3)), Some(3));
        assert_eq!(classes.lookup(&ClassValue::Text("3".into())), None);
    }

    #[test]
    fn string_classes_are_sorted_and_named_ones_match_integers_by_digits() {
        let text = seen(&[
            ClassValue::Text("dog".into()),
            ClassValue::Text("cat".into()),
        ]);
        let classes = Classes::settle(None, &text, None).unwrap();
        assert_eq!(classes.names, ["cat", "dog"]);
        let names = ["1".to_string(), "0".to_string()];
        let named = Classes::settle(Some(&names), &seen(&[ClassValue::Int(0)]), Some(2)).unwrap();
        assert_eq!(named.lookup(&ClassValue::Int(0)), Some(1));
        assert!(!named.integer);
    }

    #[test]
    fn orders_that_cannot_be_settled_say_why() {
        let ints = seen(&[ClassValue::Int(0), ClassValue::Int(2)]);
        assert_eq!(
            Classes::settle(None, &ints, Some(2)).unwrap_err(),
            ClassOrderError::Width {
                width: 2,
                found: 3,
                preview: "0, 1, 2".into()
            }
        );
        assert_eq!(
            Classes::settle(None, &seen(&[ClassValue::Int(-1)]), None).unwrap_err(),
            ClassOrderError::Negative(-1)
        );
        let twice = ["a".to_string(), "a".to_string()];
        assert_eq!(
            Classes::settle(Some(&twice), &ints, None).unwrap_err(),
            ClassOrderError::Repeated("a".into())
        );
        assert!(matches!(
            Classes::settle(None, &seen(&[ClassValue::Int(0)]), None),
            Err(ClassOrderError::TooFew { found: 1, .. })
        ));
    }
}
