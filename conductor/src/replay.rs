//! Refusing a copy of a request already taken: Slack's signed requests, signed CLI decisions
//! and GitHub's deliveries each carry an id, remembered for as long as a copy could still
//! pass the other checks.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The ids seen within the last `keep`.
#[derive(Debug)]
pub struct SeenRecently {
    keep: Duration,
    seen: Mutex<HashMap<String, Instant>>,
}

impl SeenRecently {
    pub fn new(keep: Duration) -> Self {
        SeenRecently {
            keep,
            seen: Mutex::default(),
        }
    }

    /// True the first time `id` comes within `keep`; false for a copy.
    pub fn first_time(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.retain(|_, at| now.duration_since(*at) < self.keep);
        seen.insert(id.to_owned(), now).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_new_once_until_it_is_forgotten() {
        let recent = SeenRecently::new(Duration::from_millis(50));
        assert!(recent.first_time("a"));
        assert!(!recent.first_time("a"));
        assert!(recent.first_time("b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(recent.first_time("a"));
    }
}
