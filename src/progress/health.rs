//! What the user is told of troubled hosts ([`crate::hosts`]): the words
//! for a host's state (the `-v` log and the bars' host line) and the
//! summary's list of hosts with their counts.
//!
//! The reporter cannot see the run's hosts itself (it sits below
//! [`crate::pool`]); whoever starts the run hands it a [`HostsView`] that
//! returns them. Everything here but that callback is a pure function of
//! its input, and its text passes through [`super::escape`] on its way out.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::text::human_duration;
use crate::hosts::{Record, State};

/// One troubled host as the reporter shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// `host:port`.
    pub host: String,
    pub state: State,
    pub record: Record,
}

/// Returns the run's troubled hosts, sorted by name.
pub type HostsView = Arc<dyn Fn() -> Vec<HostStatus> + Send + Sync>;

/// The [`HostsView`], once the run has set it.
#[derive(Default)]
pub(super) struct Watch(OnceLock<HostsView>);

impl Watch {
    pub(super) fn set(&self, view: HostsView) {
        let _ = self.0.set(view);
    }

    /// The troubled hosts now; none before the view is set.
    pub(super) fn hosts(&self) -> Vec<HostStatus> {
        self.0.get().map_or_else(Vec::new, |view| view())
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Watch").field(&self.0.get().is_some()).finish()
    }
}

/// `paused 12s (429)`, `down since 14:02:11 UTC, probing`.
pub(super) fn state_text(state: &State, now: Instant) -> String {
    match state {
        State::Open => "open again".to_owned(),
        State::Paused { until, status } => {
            format!("paused {} ({status})", whole_seconds(until.saturating_duration_since(now)))
        }
        State::Down { since, .. } => format!("down since {}, probing", clock(*since)),
        State::Gone { since } => {
            format!("gone: no answer since {}, longer than --host-timeout", clock(*since))
        }
    }
}

/// The bars' host line: each host that is paused, down or gone now.
pub(super) fn bar_text(hosts: &[HostStatus], now: Instant) -> String {
    let troubled: Vec<String> = hosts
        .iter()
        .filter(|h| h.state != State::Open)
        .map(|h| format!("{} {}", h.host, state_text(&h.state, now)))
        .collect();
    troubled.join("; ")
}

/// The summary's lines on hosts that had trouble, one each; none when no
/// host had any.
pub(super) fn summary_lines(hosts: &[HostStatus]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| h.record != Record::default() || matches!(h.state, State::Gone { .. }))
        .map(|h| {
            let r = &h.record;
            let mut text = format!("host {}: {} busy answers (429/503), {} pauses", h.host, r.busy, r.pauses);
            if r.outages > 0 {
                let _ =
                    write!(text, ", {} outages (longest {})", r.outages, human_duration(r.longest_outage));
            }
            if let State::Gone { since } = h.state {
                let _ = write!(text, "; gone since {}", clock(since));
            }
            text
        })
        .collect()
}

/// A pause in whole seconds, rounded up (`12s`, `2m05s`): it ticks down
/// like a clock.
fn whole_seconds(d: Duration) -> String {
    match d.as_micros().div_ceil(1_000_000) as u64 {
        s @ 0..60 => format!("{s}s"),
        s => human_duration(Duration::from_secs(s)),
    }
}

/// `since` as the time of day, UTC.
fn clock(since: SystemTime) -> String {
    let secs = since.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_summaries_in_words() {
        let now = Instant::now();
        let noon = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 14 * 3600 + 2 * 60 + 11);
        let paused = State::Paused { until: now + Duration::from_millis(11_200), status: 429 };
        assert_eq!(state_text(&paused, now), "paused 12s (429)");
        let down = State::Down { since: noon, probe_at: now, probing: true };
        assert_eq!(state_text(&down, now), "down since 14:02:11 UTC, probing");
        let hosts = [
            HostStatus {
                host: "a:80".into(),
                state: paused,
                record: Record { busy: 3, pauses: 2, ..Record::default() },
            },
            HostStatus { host: "b:80".into(), state: State::Open, record: Record::default() },
            HostStatus {
                host: "c:9".into(),
                state: State::Gone { since: noon },
                record: Record { outages: 1, longest_outage: Duration::from_secs(90), ..Record::default() },
            },
        ];
        assert_eq!(
            bar_text(&hosts, now),
            "a:80 paused 12s (429); c:9 gone: no answer since 14:02:11 UTC, longer than --host-timeout"
        );
        assert_eq!(
            summary_lines(&hosts),
            [
                "host a:80: 3 busy answers (429/503), 2 pauses",
                "host c:9: 0 busy answers (429/503), 0 pauses, 1 outages (longest 1m30s); gone since 14:02:11 UTC",
            ]
        );
    }
}
