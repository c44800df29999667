//! Progress bars for long transfers, on stderr so stdout stays pipeable.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::Progress;

/// Smaller transfers finish too fast for a bar to be worth its flicker.
pub const MIN_BAR_SIZE: u64 = 8 << 20;

/// Whether a transfer of `total` bytes deserves a bar (unknown size does:
/// a pipe may be endless, and a spinner shows it is moving).
pub fn wants_bar(total: Option<u64>) -> bool {
    total.is_none_or(|t| t >= MIN_BAR_SIZE)
}

/// Draws lazily on the first update, when the size is known (a get learns
/// it from the first message).
pub struct TransferBar {
    label: String,
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl TransferBar {
    /// `enabled` is false when stderr is not a terminal: then nothing is drawn.
    pub fn new(label: impl Into<String>, enabled: bool) -> Self {
        Self {
            label: label.into(),
            enabled,
            bar: None,
        }
    }

    pub fn update(&mut self, progress: Progress) {
        if !self.enabled {
            return;
        }
        if self.bar.is_none() {
            if !wants_bar(progress.total) {
                self.enabled = false;
                return;
            }
            self.bar = Some(make_bar(&self.label, progress.total));
        }
        if let Some(bar) = &self.bar {
            bar.set_position(progress.done);
        }
    }

    /// Removes the bar so the summary line prints cleanly.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for TransferBar {
    fn drop(&mut self) {
        self.finish();
    }
}

const BAR_TEMPLATE: &str =
    "{msg} [{bar:32}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})";
const SPINNER_TEMPLATE: &str = "{spinner} {msg} {binary_bytes} ({binary_bytes_per_sec}, {elapsed})";

fn make_bar(label: &str, total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(total) => (ProgressBar::new(total), BAR_TEMPLATE),
        None => (ProgressBar::new_spinner(), SPINNER_TEMPLATE),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_only_for_large_or_unknown_sizes() {
        assert!(!wants_bar(Some(0)));
        assert!(!wants_bar(Some(MIN_BAR_SIZE - 1)));
        assert!(wants_bar(Some(MIN_BAR_SIZE)));
        assert!(wants_bar(None));
    }

    #[test]
    fn templates_are_valid() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(SPINNER_TEMPLATE).is_ok());
    }

    #[test]
    fn disabled_bars_draw_nothing() {
        let mut bar = TransferBar::new("put", false);
        bar.update(Progress {
            done: 1,
            total: Some(1 << 30),
        });
        assert!(bar.bar.is_none());
    }
}
