//! A value that `mesh reload` may replace while connections use it: TLS
//! settings are read once per new connection, so a reload reaches every
//! connection opened after it and leaves established ones alone (as
//! Consul's TLS configurator does).

use std::sync::{Arc, RwLock};

/// A shared, replaceable value. Clones see the same value.
pub struct Swap<T>(Arc<RwLock<Arc<T>>>);

impl<T> Swap<T> {
    /// Holds `value`.
    pub fn new(value: Arc<T>) -> Self {
        Swap(Arc::new(RwLock::new(value)))
    }

    /// The value now (for one new connection).
    pub fn get(&self) -> Arc<T> {
        // A panic while holding the lock cannot leave a torn value: the
        // only write is one pointer store.
        match self.0.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the value for everyone holding a clone.
    pub fn set(&self, value: Arc<T>) {
        match self.0.write() {
            Ok(mut v) => *v = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

impl<T> Clone for Swap<T> {
    fn clone(&self) -> Self {
        Swap(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_sees_the_replacement_and_an_old_read_keeps_its_value() {
        let a = Swap::new(Arc::new(1));
        let b = a.clone();
        let before = a.get();
        b.set(Arc::new(2));
        assert_eq!((*before, *a.get(), *b.get()), (1, 2, 2));
    }
}
